/**
 * Shadow scripts: a listener's `shadowScripts` folder runs beside its live scripts on live traffic. Each
 * live script call, once decided (policy/hook-calls.ts), is given to the same hook of the shadow folder
 * with the same context; the live reply does not wait for it. The shadow sandbox is the generation's, so
 * a reload applies to it as to the live one. A different verdict is logged (hook, connection id, live and
 * shadow verdict) and counted; a shadow failure is counted, never fatal; when its isolates are all busy
 * (a looping candidate) further calls are skipped and counted, so a bad candidate costs at most its own
 * isolates' threads, never a growing queue. Nothing a shadow script returns reaches a reply, the spool or
 * delivery.
 */
import { observeHookCalls, type HookCall } from '../policy/hook-calls.ts';
import { hidePassword } from '../policy/auth-password.ts';
import { checkVerdict } from '../policy/verdict.ts';
import { verdictLabel } from '../policy/verdict-label.ts';
import { metrics } from '../metrics/metrics.ts';
import { scriptText, scriptTextWithin, type Logger } from '../logging/logger.ts';
import { FAILURE_TEXT_WRITTEN } from '../policy/run-hook.ts';
import { closeMessageText, copyMessageText, openMessageText, type Sandbox } from '../sandbox/index.ts';

export type ShadowResult = 'same' | 'different' | 'error' | 'skipped';

/** Calls in flight per shadow sandbox, at most: as many as its isolates can run, and as many again waiting. */
const IN_FLIGHT_PER_ISOLATE = 2;

export interface ShadowEvent {
  listener: string;
  hook: string;
  connectionId: string | null;
  result: ShadowResult;
  live: string;
  shadow: string | null;
}

/** Start shadowing this process's script calls; returns the function that stops it. */
export function startShadowing(logger: Logger, isolates: () => number, onSettled?: (e: ShadowEvent) => void): () => void {
  const log = logger.child({ component: 'shadow' });
  const inFlight = new Map<Sandbox, number>();
  return observeHookCalls((call) => {
    // Most calls have no shadow: this returns before anything is made for the shadow call (perf: bench:ab).
    const sandbox = call.generation.shadowSandboxFor(call.listener);
    if (sandbox && call.listener) shadowCall(sandbox, call, log, inFlight, isolates, onSettled);
  }, (generation) => generation.hasShadowScripts);
}

/** Run `call` on the shadow `sandbox`, off the caller's path, and count and log how it compares. */
function shadowCall(sandbox: Sandbox, call: HookCall, log: Logger, inFlight: Map<Sandbox, number>, isolates: () => number, onSettled?: (e: ShadowEvent) => void): void {
  const listener = call.listener?.name ?? '';
  const live = verdictLabel(call.verdict);
  const settle = (result: ShadowResult, shadow: string | null): void => {
    metrics.shadowCalls.inc({ listener, hook: call.hook, result });
    onSettled?.({ listener, hook: call.hook, connectionId: call.connectionId, result, live, shadow });
  };
  const busy = inFlight.get(sandbox) ?? 0;
  if (busy >= IN_FLIGHT_PER_ISOLATE * isolates()) return settle('skipped', null);
  inFlight.set(sandbox, busy + 1);
  metrics.shadowInFlight.inc();
  const body = bodyForShadow(sandbox, call);
  // After the live reply is on its way: the caller resumes (and writes its reply) before the shadow starts.
  void new Promise<void>((resolve) => setImmediate(resolve)).then(() => runShadow(sandbox, body ? { ...call, ctx: body.ctx } : call)).then(({ label, failure }) => {
    if (failure) {
      log.info({ cid: call.connectionId, listener, hook: call.hook, kind: failure.kind, script: failure.file, line: failure.line, err: scriptTextWithin(failure.message, FAILURE_TEXT_WRITTEN) }, `shadow script ${call.hook} failed (not fatal)`);
      return settle('error', label);
    }
    if (label === live) return settle('same', label);
    // Verdict texts are the scripts' (a candidate's may quote a client): written as their log lines are.
    const [liveShown, shadowShown] = [scriptText(live), scriptText(label)];
    log.info({ cid: call.connectionId, listener, hook: call.hook, live: liveShown, shadow: shadowShown }, `shadow verdict differs: ${call.hook} live ${liveShown}, shadow ${shadowShown}`);
    settle('different', label);
  }).finally(() => {
    body?.close();
    const left = (inFlight.get(sandbox) ?? 1) - 1;
    if (left > 0) inFlight.set(sandbox, left); else inFlight.delete(sandbox);
    metrics.shadowInFlight.dec();
  });
}

/**
 * The live data call's body is readable only while that call runs (sandbox/message-texts.ts): the shadow,
 * which runs after it, reads a copy taken now (this observer runs before the live token closes), under a
 * token of its own that closes when the shadow call ends. Copied only for a shadow data script.
 */
function bodyForShadow(sandbox: Sandbox, call: HookCall): { ctx: object; close(): void } | null {
  if (call.hook !== 'data' || !sandbox.has('data')) return null;
  const ctx = call.ctx as { message?: { token?: unknown } };
  const copy = copyMessageText(ctx.message?.token);
  if (!copy) return null;
  const token = openMessageText(copy);
  return { ctx: { ...ctx, message: { ...ctx.message, token } }, close: () => closeMessageText(token) };
}

async function runShadow(sandbox: Sandbox, call: HookCall): Promise<{ label: string; failure: { kind: string; message: string; file?: string; line?: number } | null }> {
  // A hook the candidate has no script for: its decision is the built-in rules', as a missing live script's.
  if (!sandbox.has(call.hook)) return { label: verdictLabel(undefined), failure: null };
  try {
    return { label: verdictLabel(checkVerdict(call.hook, await sandbox.invoke(call.hook, call.ctx, call.connectionId, call.connectionKey), sandbox.scriptFile(call.hook))), failure: null };
  } catch (err) {
    const e = err as { kind?: string; file?: string; line?: number; message: string };
    return { label: 'failed', failure: { kind: e.kind ?? 'verdict', message: hidePassword(call.hook, call.ctx, e.message), file: e.file, line: e.line } };
  }
}
