/**
 * A crash walk over a real server (the crash-walk mode of test/helpers/disk-faults.c): the calls that change durable
 * state under one folder are counted across all the server's processes, and the n-th is made to crash the process
 * that makes it (before or after the call) or to fail with EIO. A run with `arm(0, 'none')` only counts and traces:
 * its trace is the table of points the walk then steps through.
 */
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { diskFaults } from './disk-faults.ts';
import { startCluster, ONE_WORKER, type ClusterProcess } from './cluster.ts';

export type CrashAction = 'kill' | 'after' | 'eio' | 'slow-eio' | 'none';

/** One counted call: its number, the process that made it, the call and the file. */
export interface CrashPoint { n: number; pid: number; call: string; path: string }

export interface CrashWalk {
  /** Environment for the server (the library preloaded, the walk's folder). */
  env: Record<string, string>;
  /** Count calls under `root` only (set before arming; read by each process at its first counted call). */
  setRoot(root: string): void;
  /**
   * Count from now on (from 0); the `n`-th call takes `action`, or the `n`-th of those named by `only` (`call`: the
   * call, `*` for any; `pathEnd`: how the file's path ends), counted in whichever process makes them.
   */
  arm(n: number, action: CrashAction, only?: { call: string; pathEnd: string }): void;
  /** Stop counting. */
  disarm(): void;
  /** Whether the armed point was reached (its file is gone). */
  taken(): boolean;
  /** Calls counted so far. */
  count(): number;
  /** The calls counted since arm(). */
  trace(): CrashPoint[];
  /**
   * The armed point, once taken. Not the trace's last call: another process that read the armed point just before it
   * was taken counts its own call after it.
   */
  hit(): CrashPoint | undefined;
}

const traceLine = (line: string): CrashPoint => {
  const [n, pid, call, ...path] = line.split(' ');
  return { n: Number(n), pid: Number(pid), call: call!, path: path.join(' ') };
};

export function crashWalk(): CrashWalk {
  const faults = diskFaults();
  const dir = mkdtempSync(join(tmpdir(), 'postern-crash-walk-'));
  const counter = join(dir, 'counter');
  const at = join(dir, 'at');
  const trace = join(dir, 'trace');
  const hit = join(dir, 'hit');
  writeFileSync(counter, Buffer.alloc(4096));
  return {
    env: { ...faults.env, POSTERN_CRASH_WALK: dir },
    setRoot: (root) => writeFileSync(join(dir, 'root'), root),
    arm(n, action, only) {
      // In place, never truncated: a process that has the file mapped would fault on a page past its end.
      const fd = openSync(counter, 'r+');
      try { writeSync(fd, Buffer.alloc(16), 0, 16, 0); } finally { closeSync(fd); }
      rmSync(trace, { force: true });
      rmSync(hit, { force: true });
      writeFileSync(at, `${n} ${action}${only ? ` ${only.call} ${only.pathEnd}` : ''}\n`);
    },
    disarm: () => rmSync(at, { force: true }),
    taken: () => !existsSync(at),
    count: () => Number(readFileSync(counter).readBigInt64LE(0)),
    trace: () => (existsSync(trace) ? readFileSync(trace, 'utf8') : '').split('\n').filter(Boolean).map(traceLine).sort((a, b) => a.n - b.n),
    hit: () => {
      const line = existsSync(hit) ? readFileSync(hit, 'utf8').trim() : '';
      return line ? traceLine(line) : undefined;
    },
  };
}

/** Until the server's worker and queue process are both ready (again, after a kill). */
export async function workerAndQueueReady(c: ClusterProcess): Promise<void> {
  await c.waitFor('worker and queue process ready', async () => {
    const ps = (await c.cluster()).processes;
    return ps.some((p) => p.role === 'worker' && p.ready) && ps.some((p) => p.role === 'queue' && p.ready);
  });
}

/**
 * A `postern serve` with one worker (ONE_WORKER and `config`) on a data folder of its own, whose spool `walk` counts
 * (not yet armed), once its worker and queue process are ready. `remove()`, after its stop, removes the data folder.
 */
export async function startWalkedServer(walk: CrashWalk, config: string): Promise<{ c: ClusterProcess; dataDir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-crash-walk-data-'));
  const dataDir = join(dir, 'data');
  walk.disarm();
  walk.setRoot(join(dataDir, 'spool'));
  const c = await startCluster({ config: `${ONE_WORKER}${config}`, env: walk.env, dataDir });
  await workerAndQueueReady(c);
  return { c, dataDir, remove: () => rm(dir, { recursive: true, force: true }) };
}
