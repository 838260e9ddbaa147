/**
 * A real Redis server for tests (Debian's redis-server): on a free loopback port, no persistence, killed
 * after. It can be stopped and started again on the same port, as an outage would.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { needs } from './example.ts';
import { freePort } from './free-port.ts';

/** Test options: skipped when redis-server is missing (a failure under CI, see needs()). */
export const needsRedis = (): { skip: string | false } => needs('redis-server');

export interface TestRedis {
  readonly port: number;
  readonly url: string;
  /** The same server over its Unix socket (`unix:///…sock`, with the password as `?password=` when it has one). */
  readonly unixUrl: string;
  readonly socketPath: string;
  /** The running server's process id (benchmarks read its CPU time); null while stopped. */
  readonly pid: number | null;
  /** Kill it (SIGKILL: nothing is saved, the connections drop). */
  stop(): Promise<void>;
  /** Start it again on the same port, empty. */
  start(): Promise<void>;
  /** SIGSTOP / SIGCONT: connected, but answering nothing (a hung server). */
  pause(): void;
  resume(): void;
}


/** `password`: the server requires it (`requirepass`), and `url` carries it (`redis://:password@…`). */
export async function startRedis(opts: { password?: string } = {}): Promise<TestRedis> {
  const port = await freePort();
  let child: ChildProcess | null = null;
  const auth = opts.password === undefined ? [] : ['--requirepass', opts.password];
  // Beside the TCP port, a Unix socket (the same-host layout docs/configuration.md recommends); under 108 bytes.
  const socketPath = join(tmpdir(), `postern-redis-${port}.sock`);
  const launch = (): Promise<void> => new Promise((resolve, reject) => {
    const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--unixsocket', socketPath, '--unixsocketperm', '700',
      '--save', '', '--appendonly', 'no', ...auth], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    let output = '';
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      if (output.includes('Ready to accept connections')) resolve();
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (code) => reject(new Error(`redis-server exited (${code}) before it was ready:\n${output}`)));
    proc.once('error', reject);
  });
  await launch();
  return {
    port,
    url: `redis://${opts.password === undefined ? '' : `:${encodeURIComponent(opts.password)}@`}127.0.0.1:${port}`,
    socketPath,
    unixUrl: `unix://${socketPath}${opts.password === undefined ? '' : `?password=${encodeURIComponent(opts.password)}`}`,
    get pid() { return (child as ChildProcess | null)?.pid ?? null; },
    async stop() {
      const proc = child;
      child = null;
      if (!proc || proc.exitCode !== null) return;
      await new Promise<void>((resolve) => {
        proc.once('exit', () => resolve());
        proc.kill('SIGKILL');
      });
      await rm(socketPath, { force: true }); // killed, Redis leaves it behind (a new start replaces it)
    },
    start: launch,
    pause() { child?.kill('SIGSTOP'); },
    resume() { child?.kill('SIGCONT'); },
  };
}

/** Poll `check` until it returns true (a store reconnecting, a window ending); generous, not a speed test. */
export async function eventually(check: () => Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`not within ${timeoutMs} ms: ${what}`);
}
