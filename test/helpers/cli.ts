/** The command line as an administrator runs it: `node engine/cli/main.ts …` in a child process. */
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';

const MAIN = new URL('../../engine/cli/main.ts', import.meta.url).pathname;

export interface CliResult { code: number | null; stdout: string; stderr: string }

/** Runs `postern …` from `cwd` (default: a folder unrelated to the configuration), `input` on stdin. */
export function runCli(args: string[], opts: { input?: string | null; cwd?: string } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { cwd: opts.cwd ?? tmpdir(), stdio: ['pipe', 'pipe', 'pipe'], timeout: 60_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(opts.input ?? undefined);
  });
}
