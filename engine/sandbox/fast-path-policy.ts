/**
 * Scheduling: which calls try the fast path (the event-loop thread, see IsolateSlot.call) and for how long.
 *
 * A hook whose calls keep using up the fast path's budget runs on isolate threads only, for a while. What
 * counts is the CPU time the isolate spent on the stopped attempt, not wall time: on a loaded machine the
 * thread is descheduled mid-call and wall time runs out for quick scripts too, and moving them off the fast
 * path would double their cost for the next minute (seen in the benchmark). A script that returns a promise
 * waiting for a host operation stays on the fast path: its continuation is delivered later, on this thread too,
 * within the same budget; a delivery stopped at it counts as an overrun of each hook it answered
 * (isolate-slot.ts, RunAgain).
 */
import type { HookName } from './api/index.ts';
import { envKnob } from '../config/env-knob.ts';

/**
 * A hook that used up the fast path's budget runs on isolate threads only, for this long.
 * POSTERN_SLOW_HOOK_MS sets another: tests that must see the period end shorten it rather than wait a real minute.
 */
export const SLOW_HOOK_MS = envKnob('POSTERN_SLOW_HOOK_MS', 60_000);
/**
 * This many budget-using overruns of one hook within OVERRUN_WINDOW_MS make it slow. One alone is not
 * enough: a first call (lazy compilation) can use up the budget once.
 */
export const OVERRUNS_TO_SLOW = 3;
export const OVERRUN_WINDOW_MS = 30_000;
/** An attempt counts as using up the budget when the isolate's CPU time for it is at least this share. */
const CPU_SHARE = 0.75;

/**
 * How old a reading of the thread's CPU time a fast-path entry may reuse (thread-cpu.ts): its CPU time then
 * comes out short by at most this much. A tenth of the budget: an attempt busy for its whole budget still
 * shows 0.9 of it, well over CPU_SHARE, and one descheduled never shows more than it used.
 */
export const cpuReadingMaxAgeMs = (budgetMs: number): number => budgetMs * 0.1;
/**
 * An attempt that held the thread this many times its budget was stuck in a builtin that V8 does not
 * interrupt (a huge BigInt to string, a search over a huge sparse array): one is enough to make the hook slow.
 */
export const HELD_FACTOR = 10;

/**
 * Hooks that never take the fast path. predelivery runs in the queue runner, where no client waits on a
 * call's latency, and a call stuck there in a builtin V8 does not interrupt would hold the event loop, so
 * every delivery, until the process is killed; killed again at every retry of that one message, the
 * script would be fenced and no message delivered at all. On an isolate thread it fails at its deadline and
 * only its message is deferred (its isolate is abandoned once shown stuck: sandbox.ts, Overdue).
 */
const ISOLATE_THREAD_ONLY: ReadonlySet<HookName> = new Set<HookName>(['predelivery']);

export interface FastPathStats {
  /** Calls started on the event-loop thread. */
  calls: number;
  /** Of those, stopped at the budget and run again on an isolate thread. */
  overruns: number;
  /** Overruns that did not count towards a slow hook: the attempt had too little CPU time (descheduled). */
  descheduled: number;
  /** Entries into an isolate on the event-loop thread (calls of one turn share one). */
  batches: number;
}

export class FastPathPolicy {
  readonly budgetMs: number;
  readonly stats: FastPathStats = { calls: 0, overruns: 0, descheduled: 0, batches: 0 };
  readonly #slowUntil = new Map<HookName, number>();
  readonly #overrunsAt = new Map<HookName, number[]>();
  readonly #warn: (hook: HookName, message: string) => void;

  constructor(budgetMs: number, warn: (hook: HookName, message: string) => void) {
    this.budgetMs = budgetMs;
    this.#warn = warn;
  }

  /** The fast-path budget of a call of `hook` now; 0: straight to an isolate thread. */
  budgetFor(hook: HookName): number {
    if (this.budgetMs === 0 || ISOLATE_THREAD_ONLY.has(hook)) return 0;
    const until = this.#slowUntil.get(hook);
    if (until === undefined) return this.budgetMs;
    if (performance.now() < until) return 0;
    this.#slowUntil.delete(hook);
    return this.budgetMs;
  }

  /** A fast-path attempt of `hook` was stopped at the budget after `cpuMs` of the isolate's CPU time. */
  overran(hook: HookName, cpuMs: number): void {
    this.stats.overruns++;
    if (cpuMs < this.budgetMs * CPU_SHARE) {
      this.stats.descheduled++;
      return;
    }
    const now = performance.now(); // monotonic: a clock set back must not keep a hook off the fast path that long
    const recent = (this.#overrunsAt.get(hook) ?? []).filter((t) => now - t < OVERRUN_WINDOW_MS);
    recent.push(now);
    this.#overrunsAt.set(hook, recent);
    const held = cpuMs >= this.budgetMs * HELD_FACTOR;
    if ((recent.length < OVERRUNS_TO_SLOW && !held) || this.#slowUntil.has(hook)) return;
    this.#overrunsAt.delete(hook);
    this.#slowUntil.set(hook, now + SLOW_HOOK_MS);
    const why = held
      ? `a ${hook} call held the event loop for ${Math.round(cpuMs)} ms, past the ${this.budgetMs} ms fast path (a step V8 does not interrupt)`
      : `${OVERRUNS_TO_SLOW} ${hook} calls within ${OVERRUN_WINDOW_MS / 1000} s used up the ${this.budgetMs} ms fast path and were run again on an isolate thread`;
    this.#warn(hook, `${why}; ${hook} calls go straight to an isolate thread for the next ${SLOW_HOOK_MS / 1000} s`);
  }
}
