/** Runs the real command line, `node engine/cli/main.ts …`, as a child process, for tests of its output and exit codes. */
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';

const MAIN = new URL('../../engine/cli/main.ts', import.meta.url).pathname;

export interface CliResult { code: number | null; signal?: NodeJS.Signals | null; stdout: string; stderr: string }

export interface CliOptions {
  /** Text on stdin (default: none, stdin closed at once). */
  input?: string;
  /** Working directory (default: one unrelated to any configuration, so relative paths cannot resolve by luck). */
  cwd?: string;
  /** Hang guard; the child is killed after it. */
  timeoutMs?: number;
  /** More environment (test/helpers/disk-faults.ts's, say). */
  env?: Record<string, string>;
  /** Run as this user (the test runs as root): a server's own user, say. */
  as?: { uid: number; gid: number };
  /** Told the child's process id once it is started (to stop or signal it). */
  onSpawn?: (pid: number) => void;
}

export function runCli(args: readonly string[], opts: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], {
      cwd: opts.cwd ?? tmpdir(), stdio: ['pipe', 'pipe', 'pipe'], timeout: opts.timeoutMs ?? 60_000,
      env: { ...process.env, NODE_NO_WARNINGS: '1', ...opts.env }, ...opts.as,
    });
    if (child.pid !== undefined) opts.onSpawn?.(child.pid);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
    child.stdin.end(opts.input ?? '');
  });
}
