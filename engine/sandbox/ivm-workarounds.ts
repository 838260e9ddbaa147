/**
 * Every way the sandbox works around isolated-vm (7.x) and V8, in one place, each with why. The rest of the
 * sandbox uses these instead of reaching for the behaviour itself.
 */
import './no-wasm-code-gc.ts'; // V8 flag set before the first isolate exists; see that file for the deadlock
import ivm from 'isolated-vm';
import { timerDelay } from '../timing/timer-limit.ts';

/**
 * isolated-vm reports limits only as error texts. "Script execution timed out." comes with the stack of
 * the script where it was stopped; a memory limit disposes the isolate.
 */
export const isTimeout = (e: unknown): boolean => /execution timed out/i.test(String((e as Error)?.message));
export const isMemoryLimit = (e: unknown): boolean => /memory limit/i.test(String((e as Error)?.message));

/**
 * isolated-vm deletes a disposed isolate later, on one of its threads: give it that time before the
 * process may exit. (Exits must also be process.exit(): a natural exit tears V8's heap down, where
 * isolated-vm 7 aborts on a handle still in the young generation — see engine/cli/main.ts.) A process that
 * exits while a thread still tears an isolate down dies of SIGSEGV (seen when exiting at once after
 * disposing isolates with calls running, and now and then even after their last call had settled). The
 * grace counts from when the isolate's threads have come back (see quietAfter): a call that dispose()
 * stopped first unwinds on its thread, which takes longer than the grace on a loaded machine.
 */
export const TEARDOWN_GRACE_MS = 250;

/**
 * How long a disposed isolate's operations may take to come back before its teardown grace starts anyway:
 * longer than isolated-vm's 5 s before it gives up on a script stuck in a builtin (see newIsolate), after
 * which the thread is lost whatever the process waits for.
 */
export const QUIET_CAP_MS = 6000;

/** Settles once every promise of `inFlight` (isolated-vm operations of a disposed isolate) has, or after QUIET_CAP_MS. */
export async function quietAfter(inFlight: Iterable<Promise<unknown>>): Promise<void> {
  await settledWithin(Promise.allSettled([...inFlight]), QUIET_CAP_MS).catch(() => undefined);
}

export function teardownGrace(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, TEARDOWN_GRACE_MS));
}

/**
 * Let go of handles into an isolate now. A handle still alive when the process exits is destroyed during
 * Node's teardown, where isolated-vm aborts (`IsolateEnvironment::GetCurrent` assertion).
 */
export function releaseAll(handles: ReadonlyArray<{ release(): void } | undefined>): void {
  for (const handle of handles) {
    try { handle?.release(); } catch { /* already gone with its isolate */ }
  }
}

/**
 * A new isolate. With `onCatastrophicError` set, isolated-vm calls it (on the event loop) when a script has
 * not stopped 5 s after its time limit — a V8 builtin that never checks for interrupts, such as
 * Array(2**32-1).lastIndexOf(1) — and then parks that script's thread for good (a signal handler that
 * sleeps); without it, it waits for ever and the process dies with SIGSEGV when it exits. Either way the
 * thread is lost and process.exit() no longer returns: the process must be replaced (unrecoverable.ts).
 * The same callback reports V8 running out of memory outside the heap limit.
 */
export function newIsolate(memoryLimitMb: number, onCatastrophicError: (message: string) => void): ivm.Isolate {
  return new ivm.Isolate({ memoryLimit: memoryLimitMb, onCatastrophicError });
}

/**
 * Give up on an isolate. dispose() returns at once even while a call runs in it; a call stuck in a
 * builtin then never settles (neither resolves nor rejects), so callers must not wait for it.
 */
export function abandon(isolate: ivm.Isolate): void {
  try {
    if (!isolate.isDisposed) isolate.dispose();
  } catch (e) {
    if (!isolate.isDisposed) throw e; // else its memory limit disposed it in between (see executing())
  }
}

/**
 * Whether a task is executing in the isolate now — running, descheduled, or stuck in a builtin — as opposed to idle
 * (a call waiting for its promise). isolated-vm's wallTime counts up only while a task executes (its cpuTime is not
 * the thread's CPU time either: see thread-cpu.ts), so two readings differ only then.
 */
export function executing(isolate: ivm.Isolate): boolean {
  // Reaching its memory limit, an isolate is disposed from its own thread at any moment: wallTime then throws
  // (asked from a timer, an uncaught exception that ended the process), and a disposed isolate executes nothing.
  try {
    const before = isolate.wallTime;
    return isolate.wallTime > before;
  } catch (e) {
    if (isolate.isDisposed) return false;
    throw e;
  }
}

/** Raised by settledWithin() when isolated-vm's own promise did not settle in time. */
export class NeverSettled extends Error {}

/**
 * `promise` (isolated-vm's: a module evaluation, a call on an isolate thread) or a NeverSettled rejection
 * after `ms` (a timer's longest at most). Its own time limit does not end it while a builtin runs (see newIsolate), and then nothing does.
 * The rejection waits for the check phase after the timer: an event loop that gets the CPU back late runs its timers
 * before it reads what the isolate thread delivered meanwhile, and a top level that had finished in time failed its load.
 */
export async function settledWithin<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let look: ReturnType<typeof setImmediate> | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => {
      timer = setTimeout(() => { look = setImmediate(() => reject(new NeverSettled())); }, timerDelay(ms));
    })]);
  } finally {
    clearTimeout(timer);
    clearImmediate(look);
  }
}


/**
 * A SharedArrayBuffer for an isolate's runtime, sharing its memory with this process (isolated-vm's copy of one
 * keeps the backing store): the runtime writes the running-call marker's word 1 (running-call.ts) without a
 * crossing per call.
 */
export function sharedInto(buffer: SharedArrayBuffer): ivm.Copy<SharedArrayBuffer> {
  return new ivm.ExternalCopy(buffer).copyInto({ release: true });
}
