/**
 * What a process holds, for leak tests: a failure path repeated a few hundred times must bring the process
 * back to the baseline it had after one warm-up round. Read from outside (/proc/PID: descriptors by kind,
 * RSS, threads), so it works for a `postern serve` child as for this process; for this process also Node's
 * own view (active handles and requests by kind, heap after a full collection).
 */
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { readdir, readlink, readFile } from 'node:fs/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { until } from './wait.ts';

export interface ResourceSnapshot {
  /** Open descriptors by kind: `socket`, `pipe`, `anon_inode:[eventfd]`, a file path with its digits as N. */
  descriptors: Map<string, number>;
  descriptorCount: number;
  rssBytes: number;
  threads: number;
}

/** A descriptor's kind: its link target without the numbers that differ per open file (inode, pid, id). */
function kindOf(target: string): string {
  if (/^socket:/.test(target)) return 'socket';
  if (/^pipe:/.test(target)) return 'pipe';
  return target.replace(/\d+/g, 'N');
}

/** `pid` (default: this process) as it is now. A process gone since gives what was read. */
export async function snapshot(pid: number | 'self' = 'self'): Promise<ResourceSnapshot> {
  const names = await readdir(`/proc/${pid}/fd`);
  const targets = await Promise.all(names.map((n) => readlink(`/proc/${pid}/fd/${n}`).catch(() => null)));
  const descriptors = new Map<string, number>();
  let descriptorCount = 0;
  for (const t of targets) {
    if (t === null) continue;
    descriptorCount++;
    const k = kindOf(t);
    descriptors.set(k, (descriptors.get(k) ?? 0) + 1);
  }
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0);
  return { descriptors, descriptorCount, rssBytes: field('VmRSS') * 1024, threads: field('Threads') };
}

/** The kinds of which `now` holds more than `base`, as `kind +n` (for a failure's message). */
export function extraDescriptors(base: ResourceSnapshot, now: ResourceSnapshot): string[] {
  return [...now.descriptors].filter(([k, n]) => n > (base.descriptors.get(k) ?? 0)).map(([k, n]) => `${k} +${n - (base.descriptors.get(k) ?? 0)}`);
}

/** Node's active handles and requests of this process by kind (TCPSocketWrap, Timeout, FSReqCallback…). */
export function activeResources(): Map<string, number> {
  const m = new Map<string, number>();
  for (const k of process.getActiveResourcesInfo()) m.set(k, (m.get(k) ?? 0) + 1);
  return m;
}

/** The kinds of which `now` holds more than `base` (`kind +n`). */
export function extraResources(base: Map<string, number>, now: Map<string, number>): string[] {
  return [...now].filter(([k, n]) => n > (base.get(k) ?? 0)).map(([k, n]) => `${k} +${n - (base.get(k) ?? 0)}`);
}

/** This process's heap after a full collection, so it measures what is kept rather than garbage not yet collected. */
export function heapAfterGc(): number {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
  return process.memoryUsage().heapUsed;
}

/**
 * Waits until `pid`'s descriptors are back within `slack` of `base`'s count (connections close after their
 * last reply, timers fire), else fails naming the kinds that are still extra.
 */
export async function descriptorsBackTo(base: ResourceSnapshot, what: string, opts: { pid?: number | 'self'; slack?: number; timeoutMs?: number } = {}): Promise<void> {
  const { pid = 'self', slack = 2, timeoutMs = 30_000 } = opts;
  try {
    await until(`${what}: descriptors back to ${base.descriptorCount}`, async () => (await snapshot(pid)).descriptorCount <= base.descriptorCount + slack, { timeoutMs });
  } catch (err) {
    const now = await snapshot(pid);
    throw new Error(`${(err as Error).message}; now ${now.descriptorCount}, extra: ${extraDescriptors(base, now).join(', ')}`);
  }
}

/** The same for this process's active Node resources (handles, requests, timers), within `slack` in all. */
export async function resourcesBackTo(base: Map<string, number>, what: string, opts: { slack?: number; timeoutMs?: number } = {}): Promise<void> {
  const { slack = 2, timeoutMs = 30_000 } = opts;
  const total = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);
  try {
    await until(`${what}: active resources back to ${total(base)}`, () => total(activeResources()) <= total(base) + slack, { timeoutMs });
  } catch (err) {
    throw new Error(`${(err as Error).message}; now ${total(activeResources())}, extra: ${extraResources(base, activeResources()).join(', ')}`);
  }
}

/**
 * This process out of file descriptors (EMFILE at every open, socket and accept), as a descriptor leak or a flood of
 * connections leaves a server: its soft limit lowered to a little above what it holds (prlimit, no root needed),
 * the rest filled with /dev/null. `topUp()` fills again what the process closed since (it stays at the limit);
 * `release()` closes the fillers and gives the limit back.
 */
export function exhaustDescriptors(): { topUp(): void; release(): void } {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const [, soft, hard] = /Max open files\s+(\S+)\s+(\S+)/.exec(limits)!;
  const open = readdirSync('/proc/self/fd').length;
  execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${open + 16}:${hard}`]);
  const fillers: number[] = [];
  const fill = (): void => {
    try {
      for (;;) fillers.push(openSync('/dev/null', 'r'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EMFILE') throw err;
    }
  };
  fill();
  return {
    topUp: fill,
    release() {
      for (const fd of fillers.splice(0)) closeSync(fd);
      execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${soft}:${hard}`]);
    },
  };
}
