/**
 * Debian's HAProxy for tests: started in the foreground (`-db`) on a configuration the test wrote, with a stats
 * socket the tests ask for its own view of its servers (`show stat`) instead of guessing from timing, and
 * its log (health-check results included) collected from stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { once } from 'node:events';
import { join } from 'node:path';
import { closed, until } from './wait.ts';

/** Debian's, by its path: /usr/sbin is not on every PATH. */
export const HAPROXY = '/usr/sbin/haproxy';

export interface TestHaproxy {
  child: ChildProcess;
  /** What it wrote so far (its log, with `option log-health-checks` each check's change). */
  output(): string;
  /** `show stat`: one record per proxy and server, by the CSV header's names. */
  stats(): Promise<Array<Record<string, string>>>;
  /** The `status` column of `backend/server` (UP, DOWN, "UP 1/2", "DOWN 1/2", MAINT, …). */
  status(backend: string, server: string): Promise<string>;
  stop(): Promise<void>;
}

/** `show stat` over the stats socket at `socket`. */
export async function haproxyStats(socket: string): Promise<Array<Record<string, string>>> {
  const s = net.connect(socket);
  let text = '';
  s.on('data', (d: Buffer) => { text += d; });
  await once(s, 'connect');
  s.end('show stat\n');
  await closed(s);
  const [header, ...rows] = text.trim().split('\n');
  const names = header!.replace(/^# /, '').split(',');
  return rows.map((r) => Object.fromEntries(r.split(',').map((v, i) => [names[i], v])));
}

/**
 * HAProxy on `config` (written to `dir`/haproxy.cfg), with a stats socket and logging to stdout added to its
 * `global` section; resolved once the stats socket lists `ready` (a proxy name: its frontends are bound then).
 */
export async function startHaproxy(dir: string, config: string, ready: string): Promise<TestHaproxy> {
  const socket = join(dir, 'haproxy.sock');
  const cfg = config.replace(/^global\n/m, `global\n  stats socket ${socket} level user\n  log stdout format raw local0\n`)
    .replace(/^defaults\n/m, 'defaults\n  log global\n  option log-health-checks\n');
  await writeFile(join(dir, 'haproxy.cfg'), cfg);
  const child = spawn(HAPROXY, ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; });
  child.stderr!.on('data', (d: Buffer) => { out += d; });
  const stats = (): Promise<Array<Record<string, string>>> => haproxyStats(socket);
  await until('haproxy listening', async () => {
    if (child.exitCode !== null) throw new Error(`haproxy exited:\n${out}`);
    return (await stats().catch(() => [])).some((r) => r.pxname === ready);
  }, { timeoutMs: 30_000 });
  return {
    child,
    output: () => out,
    stats,
    async status(backend, server) {
      return (await stats()).find((r) => r.pxname === backend && r.svname === server)?.status ?? 'absent';
    },
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}
