/**
 * A bound on building one generation. A script's top level may never finish (an uninterruptible V8
 * builtin, a promise that never settles); the reload must still end, be reported, and leave the next
 * change free to start a fresh build.
 */
import type { Config } from '../config/schema.ts';
import { timerDelay } from '../timing/timer-limit.ts';
import { deadlineAfterReads } from '../timing/deadline-after-reads.ts';

/** Hooks a scripts folder may hold (each top level runs once per isolate). */
const HOOKS_PER_FOLDER = 7;

/**
 * Generous: a few seconds for reading and compiling, plus every top level of every isolate running to
 * its own limit one after another (the sandbox stops a top level after max(1 s, timeoutMs)).
 */
export function buildDeadlineMs(config: Config): number {
  const folders = new Set([config.scripts, ...[...config.listeners, ...config.policyServices].map((l) => l.scripts ?? config.scripts)]).size;
  const topLevel = Math.max(1000, config.sandbox.timeoutMs);
  // A product of configured values: past a timer's reach it would end every build at once ("timed out").
  return timerDelay(5000 + folders * HOOKS_PER_FOLDER * config.sandbox.isolates * topLevel);
}

export type DeadlineResult<T> = { kind: 'done'; value: T } | { kind: 'failed'; error: unknown } | { kind: 'timedOut' };

/**
 * Settles with the work's result, or with `timedOut` after `ms` (the work then goes on unobserved). The deadline is
 * looked at after the sockets and other threads' results are read (deadline-after-reads.ts): a build that finished
 * in time, its last result waiting while a loaded machine held the process back, was refused as timed out.
 */
export function withDeadline<T>(work: Promise<T>, ms: number): Promise<DeadlineResult<T>> {
  let cancel = (): void => {};
  const expired = new Promise<DeadlineResult<T>>((resolve) => { cancel = deadlineAfterReads(ms, () => resolve({ kind: 'timedOut' })); });
  const settled = work.then((value): DeadlineResult<T> => ({ kind: 'done', value }), (error: unknown): DeadlineResult<T> => ({ kind: 'failed', error }));
  return Promise.race([settled, expired]).finally(cancel);
}
