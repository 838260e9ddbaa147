/**
 * The process-wide signal that the sandbox cannot recover inside this process: isolated-vm reported a
 * catastrophic error (a script that did not stop within 5 s of its time limit — its thread is parked for
 * good — or a V8 out-of-memory). Calls keep failing closed and the pool keeps serving on fresh isolates,
 * but each such event leaks a thread and an isolate, and the process can no longer exit normally
 * (process.exit() waits for the parked thread): a worker process should be replaced, and end itself with
 * a signal (process.kill(process.pid, 'SIGKILL')) once its connections are handed over or timed out.
 */
import type { RunningScript } from './running-call.ts';

export type UnrecoverableListener = (reason: string) => void;

const listeners = new Set<UnrecoverableListener>();
const reasons: string[] = [];

/** Listen for the signal; returns an unsubscribe. A listener added late hears about earlier reasons at once. */
export function onUnrecoverable(listener: UnrecoverableListener): () => void {
  listeners.add(listener);
  for (const reason of reasons) {
    try { listener(reason); } catch { /* a listener must not break the sandbox */ }
  }
  return () => listeners.delete(listener);
}

/** Whether the signal has been given in this process, and why (first reason first). */
export function unrecoverableReasons(): readonly string[] {
  return reasons;
}

export function reportUnrecoverable(reason: string): void {
  reasons.push(reason);
  for (const listener of listeners) {
    try { listener(reason); } catch { /* idem */ }
  }
}

let abandonedRunning = 0;
const abandonedScripts = new Map<string, RunningScript>();

/**
 * An isolate was given up while a call or top level was still running in it (its deadline passed): its
 * thread may be stuck for good, which isolated-vm says only seconds later (reportUnrecoverable). `script`:
 * the call's script, when known — it is blamed if the process then has to be replaced.
 */
export function reportAbandonedRunning(script?: RunningScript): void {
  abandonedRunning++;
  if (script) abandonedScripts.set(`${script.hook}\0${script.file}\0${script.sha256}`, script);
}

/**
 * The scripts whose calls were abandoned while running in this process: when the process cannot recover
 * (a parked thread), they are what made it so, and a worker's replacement counts as their crash (the
 * supervisor's fence), as a hang on the event-loop thread does. One that hangs on an isolate thread
 * answers 451 at its deadline, but still costs its process: fenced all the same once it repeats.
 */
export function abandonedRunningScripts(): RunningScript[] {
  return [...abandonedScripts.values()];
}

/**
 * Whether process.exit() may hang or crash in teardown (SIGSEGV) now: an isolate was given up while it ran,
 * or the signal was given. A one-shot command then ends without teardown after its output (engine/cli/main.ts).
 */
export function exitMayHang(): boolean {
  return abandonedRunning > 0 || reasons.length > 0;
}
