/**
 * Verdict → access(5) action, the answer Postfix applies: accept is DUNNO (the next restriction decides)
 * or OK (authoritative service); reject is `<code> <enhanced> <text>`; defer is `DEFER_IF_PERMIT <text>`
 * or the verdict's own 4xx; a failed script is the service's failureAction. Codes and default texts
 * come from the same verdict table as the SMTP listeners' replies (engine/smtp/verdict-replies.ts).
 * An accept with header edits is Postfix's `PREPEND` where access(5) can say it (header-action.ts); an accept
 * that holds the message is Postfix's `HOLD`.
 */
import type { BuiltinRelayDecision, HookName, Verdict } from '../sandbox/api/index.ts';
import type { PolicyServiceConfig } from '../config/schema.ts';
import { FAIL_CLOSED } from '../policy/verdict.ts';
import { verdictReply } from '../smtp/verdict-replies.ts';
import { reply } from '../smtp/replies.ts';
import { relayRefusal } from '../smtp/relay-reply.ts';
import type { SmtpReply } from '../smtp/reply.ts';
import { headerEditAction } from './header-action.ts';

/** The answer to a request Postern cannot read (SMTPD_POLICY_README's own wording). */
export const MALFORMED_ACTION = 'DEFER_IF_PERMIT Service temporarily unavailable';

/** For the metric and the log: what the answer does. */
export type ActionKind = 'dunno' | 'ok' | 'prepend' | 'hold' | 'reject' | 'defer' | 'failure' | 'malformed';

export interface PolicyAction {
  action: string;
  kind: ActionKind;
  /** Why a verdict the script returned could not be answered (kind 'failure'): the caller logs it with the script. */
  error?: string;
  /** Why a refusal (reject, defer, failure): the rule or script, as a listener's decision line gives it. */
  reason?: string;
}

/** No decision: Postfix's next restriction decides (also the answer to a state without a hook, VRFY or ETRN, that no earlier stage refused). */
export const DUNNO: PolicyAction = Object.freeze({ action: 'DUNNO', kind: 'dunno' });
const OK: PolicyAction = Object.freeze({ action: 'OK', kind: 'ok' });

const replyAction = (r: SmtpReply): string => `${r.responseCode} ${r.enhanced} ${r.text}`;

/**
 * The action for `verdict` (undefined: the script gave none, or there is no script). Without a verdict the
 * built-in relay rule decides at RCPT when the service enforces it; otherwise Postfix's next restriction does.
 */
export function policyAction(
  service: PolicyServiceConfig, hook: HookName, verdict: Verdict | undefined, builtin: BuiltinRelayDecision | null, recipient = '',
  protocolState = '', unknownRecipientReply: 'reject' | 'defer' = 'reject',
): PolicyAction {
  const accepted = service.authoritative ? OK : DUNNO;
  if (verdict === FAIL_CLOSED) return { action: service.failureAction, kind: 'failure', reason: reply('policyFailed', { hook }).reason };
  if (verdict === undefined) {
    if (!(service.relayRule && builtin)) return DUNNO;
    if (builtin.accepted) return accepted;
    const denied = relayRefusal(recipient, builtin, unknownRecipientReply)!;
    return { action: replyAction(denied), kind: 'reject', reason: denied.reason };
  }
  if (verdict.verdict === 'accept') {
    // A hold must reach Postfix as its HOLD: answered DUNNO or OK, the message a script meant to keep from
    // delivery went on to its next hop. One answer holds one action, so a hold with header edits fails closed.
    if (verdict.hold !== undefined) {
      if (!verdict.headers?.length) return { action: `HOLD ${verdict.hold}`, kind: 'hold' };
      return { action: service.failureAction, kind: 'failure', reason: reply('policyFailed', { hook }).reason,
        error: 'a hold and header edits: a Postfix policy answer holds one action, so HOLD and PREPEND cannot both be answered' };
    }
    if (!verdict.headers?.length) return accepted;
    const edit = headerEditAction(protocolState, verdict.headers);
    return 'prepend' in edit ? { action: edit.prepend, kind: 'prepend' }
      : { action: service.failureAction, kind: 'failure', error: edit.error, reason: reply('policyFailed', { hook }).reason };
  }
  const r = verdictReply(hook, verdict)!;
  if (verdict.verdict === 'reject') return { action: replyAction(r), kind: 'reject', reason: r.reason };
  return { action: service.deferAction === 'reply' ? replyAction(r) : `DEFER_IF_PERMIT ${r.text}`, kind: 'defer', reason: r.reason };
}
