/**
 * The one place a finished script call can be watched from: `postern try` shows it, shadow scripts
 * (engine/shadow/) run their candidate beside it, replay (engine/replay/) records it. Observers run after
 * the live verdict is decided and must not block or throw into the caller: whatever they do with the call
 * is theirs to schedule. With no observer, runHook pays one size check.
 */
import type { ListenerConfig } from '../config/schema.ts';
import type { HookName, PredeliveryVerdict, Verdict } from '../sandbox/api/index.ts';
import type { PolicyGeneration } from './generation.ts';

/** What a script call failed with (it then failed closed). */
export interface HookFailure { kind: string; message: string; file?: string; line?: number; column?: number }

export interface HookCall {
  generation: PolicyGeneration;
  /** The SMTP listener, or a policy service (which has no shadow scripts); undefined for predelivery. */
  listener: (Pick<ListenerConfig, 'scripts'> & Partial<Pick<ListenerConfig, 'name' | 'shadowScripts'>>) | undefined;
  hook: HookName;
  /** The context the script saw (plain data, as it crossed into the sandbox; an SMTP transaction's recipients are a ListView, whose JSON is the array). */
  ctx: object;
  connectionId: string | null;
  connectionKey: string | undefined;
  /** The checked verdict (undefined: the script returned nothing); FAIL_CLOSED after a failure. */
  verdict: Verdict | PredeliveryVerdict | undefined;
  failure: HookFailure | null;
  seconds: number;
}

export type HookObserver = (call: HookCall) => void;

/** Which generations' calls an observer wants: a function of the generation alone (its answer is kept). */
export type HookInterest = (generation: PolicyGeneration) => boolean;

export const hookObservers = new Map<HookObserver, HookInterest | null>();

/**
 * Whether any observer wants `generation`'s calls, per generation (forgotten whenever observers change).
 * A server always has its shadow and replay observers, yet most generations have neither: their calls
 * then build no HookCall and call nobody (perf: ~1-3 µs per message in bench (a)'s profile).
 */
let observed = new WeakMap<PolicyGeneration, boolean>();

/**
 * Watch every script call of this process (or, with `interest`, of the generations it says yes to);
 * returns the function that stops watching.
 */
export function observeHookCalls(observer: HookObserver, interest?: HookInterest): () => void {
  hookObservers.set(observer, interest ?? null);
  observed = new WeakMap();
  return () => {
    hookObservers.delete(observer);
    observed = new WeakMap();
  };
}

/** Whether runHook must hand `generation`'s calls to notifyHookCall. */
export function hookCallsObserved(generation: PolicyGeneration): boolean {
  if (hookObservers.size === 0) return false;
  let yes = observed.get(generation);
  if (yes === undefined) {
    yes = false;
    for (const interest of hookObservers.values()) {
      try {
        if (interest === null || interest(generation)) yes = true;
      } catch {
        yes = true; // an interest that fails: the observer sees the calls and decides itself
      }
    }
    observed.set(generation, yes);
  }
  return yes;
}

/** Hand a call to every observer that wants it; an observer that throws is its own problem, never the session's. */
export function notifyHookCall(call: HookCall): void {
  for (const [observer, interest] of hookObservers) {
    try {
      if (interest === null || interest(call.generation)) observer(call);
    } catch { /* an observer must not change a live decision */ }
  }
}
