/**
 * Runs one hook's script, if the generation has one, and returns its checked verdict. Any failure —
 * throw, timeout, memory, malformed verdict — is logged with file and line and fails closed (451 4.3.0).
 */
import type { HookName } from '../sandbox/api/index.ts';
import type { ListenerConfig } from '../config/schema.ts';
import type { PolicyGeneration } from './generation.ts';
import type { PredeliveryVerdict, Verdict } from '../sandbox/api/index.ts';
import { checkVerdict, FAIL_CLOSED } from './verdict.ts';
import { scriptTextWithin, type Logger } from '../logging/logger.ts';
import { scriptCalled, secondsSince } from '../metrics/metrics.ts';
import { hookCallsObserved, notifyHookCall } from './hook-calls.ts';
import { hidePassword } from './auth-password.ts';

export { FAIL_CLOSED };

/** Characters of a script's failure text a log line holds, as written (the sandbox cuts it to as many as thrown). */
export const FAILURE_TEXT_WRITTEN = 8192 + 64;

export async function runHook(
  generation: PolicyGeneration, listener: Pick<ListenerConfig, 'scripts' | 'name'> | undefined, hook: HookName, ctx: object,
  connectionId: string | null, log: Logger, connectionKey?: string, source: 'smtp' | 'postfix-policy' = 'smtp',
): Promise<Verdict | PredeliveryVerdict | undefined> {
  const sandbox = generation.sandboxFor(listener);
  if (!sandbox.has(hook)) return undefined;
  const start = performance.now();
  try {
    const verdict = checkVerdict(hook, await sandbox.invoke(hook, ctx, connectionId, connectionKey), sandbox.scriptFile(hook));
    const seconds = secondsSince(start);
    scriptCalled(listener?.name ?? '', hook, generation.serial, seconds, verdict?.verdict ?? 'none', undefined, source);
    if (hookCallsObserved(generation)) notifyHookCall({ generation, listener, hook, ctx, connectionId, connectionKey, verdict, failure: null, seconds });
    return verdict;
  } catch (err) {
    const e = err as { kind?: string; file?: string; line?: number; column?: number; message: string };
    // An auth script's error may quote the client's password (V8 writes the value it could not parse).
    const message = hidePassword(hook, ctx, e.message);
    const seconds = secondsSince(start);
    scriptCalled(listener?.name ?? '', hook, generation.serial, seconds, 'failed', e.kind ?? 'verdict', source);
    if (hookCallsObserved(generation)) {
      notifyHookCall({ generation, listener, hook, ctx, connectionId, connectionKey, verdict: FAIL_CLOSED, seconds,
        failure: { kind: e.kind ?? 'verdict', message, file: e.file, line: e.line, column: e.column } });
    }
    // The message of what a script threw may carry a client's text (a header, an address); it is held to what the
    // sandbox cut it to (8192 characters) as written, escapes included.
    const located = String(err);
    const around = Math.max(0, located.length - String(e.message ?? '').length) || 0; // `file:line:column: kind: ` before the text
    log.error({ cid: connectionId, hook, kind: e.kind ?? 'verdict', script: e.file, line: e.line, column: e.column, err: scriptTextWithin(message, FAILURE_TEXT_WRITTEN) },
      `policy script ${hook} failed: ${scriptTextWithin(hidePassword(hook, ctx, located), FAILURE_TEXT_WRITTEN + around)}`);
    return FAIL_CLOSED;
  }
}
