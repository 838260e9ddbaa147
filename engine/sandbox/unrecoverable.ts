/**
 * The process-wide signal that the sandbox cannot recover inside this process: isolated-vm reported a
 * catastrophic error (a script that did not stop within 5 s of its time limit — its thread is parked for
 * good — or a V8 out-of-memory). Calls keep failing closed and the pool keeps serving on fresh isolates,
 * but each such event leaks a thread and an isolate, and the process can no longer exit normally
 * (process.exit() waits for the parked thread): a worker process should be replaced, and end itself with
 * a signal (process.kill(process.pid, 'SIGKILL')) once its connections are handed over or timed out.
 */
import { fenceKey, type RunningScript } from './running-call.ts';

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
  tellRecycle();
}

let abandonedRunning = 0;
/** Calls given up on while running (a top level's load does not count here: see mustRecycle). */
let abandonedCalls = 0;
const abandonedScripts = new Map<string, RunningScript>();
/** Sources whose top level was given up on while running, by hook, file and SHA-256. */
const stuckLoads = new Map<string, RunningScript>();
/** Live and shadow runs of one file apart, as the fences name them: blamed, each gets its own crash (fenceKey). */
const keyOf = fenceKey;

/**
 * An isolate was given up while a call (`what`: 'call') or a top level ('load') was still running in it (its
 * deadline passed): its thread may be stuck for good, which isolated-vm says only seconds later
 * (reportUnrecoverable). `script`: the call's script, when known — it is blamed if the process then has to be
 * replaced; a top level's is remembered so that the same source is not run again in this process (stuckAtLoad).
 */
export function reportAbandonedRunning(script?: RunningScript, what: 'call' | 'load' = 'call'): void {
  abandonedRunning++;
  if (what === 'load') {
    if (script) stuckLoads.set(keyOf(script), script);
  } else {
    abandonedCalls++;
    if (script) abandonedScripts.set(keyOf(script), script);
  }
  tellRecycle();
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

/** The scripts whose top level was given up on while loading in this process (see stuckAtLoad). */
export function stuckLoadScripts(): RunningScript[] {
  return [...stuckLoads.values()];
}

/**
 * Whether this source's top level was given up on while loading earlier in this process: it is not run again
 * (each run would park one more thread), until its file changes (another SHA-256).
 */
export function stuckAtLoad(script: RunningScript): boolean {
  // The same source parks a thread whether it loads live or as a shadow script.
  return stuckLoads.size > 0 && (stuckLoads.has(keyOf({ ...script, shadow: false })) || stuckLoads.has(keyOf({ ...script, shadow: true })));
}

/**
 * Whether the process must be replaced: the signal was given, and not only for top levels given up on while
 * loading. A reload whose top level could not be stopped was refused and the running generation serves on;
 * the thread it parked costs memory, not service (and the same source is not run again: stuckAtLoad), so a
 * worker is not emptied for it — a replacement would load that same file from disk, and fail as it did. A
 * call given up on, or a signal no abandonment explains, still means the process is replaced.
 */
export function mustRecycle(): boolean {
  return reasons.length > 0 && (abandonedCalls > 0 || stuckLoads.size >= MAX_STUCK_LOADS || (stuckLoads.size === 0 && loading === 0));
}

/**
 * Distinct sources given up on while loading that a process keeps serving with: each keeps its parked thread and
 * its isolate's memory (up to memoryLimitMb) for good, so an operator's fourth broken save does recycle it (its
 * replacement loads what is on disk then; a source that fails that start again is fenced after three).
 */
export const MAX_STUCK_LOADS = 4;

/** Top levels being loaded now: a signal that comes meanwhile (a V8 out-of-memory in one) waits for their outcome. */
let loading = 0;

/** A top level starts loading (see mustRecycle). */
export function loadStarted(): void {
  loading++;
}

/** It ended: loaded, failed, or given up on while running (reportAbandonedRunning, 'load', before this). */
export function loadEnded(): void {
  loading--;
  tellRecycle();
}

const recycleListeners = new Set<UnrecoverableListener>();
let recycleTold = false;

/** Listen for mustRecycle() becoming true (once; at once if it is already). Returns an unsubscribe. */
export function onMustRecycle(listener: UnrecoverableListener): () => void {
  recycleListeners.add(listener);
  if (recycleTold) {
    try { listener(reasons[0]!); } catch { /* a listener must not break the sandbox */ }
  }
  return () => recycleListeners.delete(listener);
}

function tellRecycle(): void {
  if (recycleTold || !mustRecycle()) return;
  recycleTold = true;
  for (const listener of recycleListeners) {
    try { listener(reasons[0]!); } catch { /* idem */ }
  }
}

/**
 * Whether process.exit() may hang or crash in teardown (SIGSEGV) now: an isolate was given up while it ran,
 * or the signal was given. A one-shot command then ends without teardown after its output (engine/cli/main.ts).
 */
export function exitMayHang(): boolean {
  return abandonedRunning > 0 || reasons.length > 0;
}
