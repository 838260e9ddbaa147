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
  /** The context the script saw (plain data, as it crossed into the sandbox). */
  ctx: object;
  connectionId: string | null;
  connectionKey: string | undefined;
  /** The checked verdict (undefined: the script returned nothing); FAIL_CLOSED after a failure. */
  verdict: Verdict | PredeliveryVerdict | undefined;
  failure: HookFailure | null;
  seconds: number;
}

export type HookObserver = (call: HookCall) => void;

export const hookObservers = new Set<HookObserver>();

/** Watch every script call of this process; returns the function that stops watching. */
export function observeHookCalls(observer: HookObserver): () => void {
  hookObservers.add(observer);
  return () => { hookObservers.delete(observer); };
}

/** Hand a call to every observer; an observer that throws is its own problem, never the session's. */
export function notifyHookCall(call: HookCall): void {
  for (const observer of hookObservers) {
    try { observer(call); } catch { /* an observer must not change a live decision */ }
  }
}
