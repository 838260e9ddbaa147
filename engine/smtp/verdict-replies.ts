/**
 * The verdict table: which catalogue reply (replies.ts) each hook's verdict becomes, and how a verdict's
 * own code, enhanced code, text and disconnect change it. The one place a checked verdict
 * (policy/verdict.ts) turns into a reply, for the SMTP hooks and for predelivery alike.
 */
import type { HookName, PredeliveryVerdict, Verdict } from '../sandbox/api/index.ts';
import { FAIL_CLOSED } from '../policy/verdict.ts';
import { reply, type ReplyName } from './replies.ts';
import { clipUtf8, MAX_REPLY_TEXT_BYTES, withoutControls, type SmtpReply } from './reply.ts';

interface VerdictRow {
  reject: ReplyName;
  defer: ReplyName;
  /** An accept's text replaces the text of this reply (null: an accept's text is ignored in this hook). */
  accept: ReplyName | null;
  /** How an accept's text is put into the reply: `{text}` and the accept reply's own placeholders. */
  acceptText?: string;
  /** A defer with `disconnect` defaults to 421 (not in predelivery: there is no connection to close). */
  disconnects: boolean;
}

const VERDICT_TABLE: Record<HookName, VerdictRow> = {
  connect: { reject: 'connectRefused', defer: 'policyDeferred', accept: null, disconnects: true },
  helo: { reject: 'heloRefused', defer: 'policyDeferred', accept: null, disconnects: true },
  auth: { reject: 'authRefused', defer: 'authDeferred', accept: null, disconnects: true },
  mailfrom: { reject: 'senderRefused', defer: 'policyDeferred', accept: 'senderAccepted', disconnects: true },
  rcptto: { reject: 'recipientRefused', defer: 'policyDeferred', accept: 'recipientAccepted', disconnects: true },
  data: { reject: 'messageRefused', defer: 'policyDeferred', accept: 'queued', acceptText: '{text}: queued as {id}', disconnects: true },
  predelivery: { reject: 'deliveryRefused', defer: 'deliveryDeferred', accept: null, disconnects: false },
};

/** An accept reply's template with the script's text and the queue id put in. */
function fillAccept(template: string, text: string, id: string): string {
  return template.replace(/\{(text|id)\}/g, (_, key: string) => (key === 'text' ? text : id));
}

/** The enhanced code of a verdict that chose its code but no enhanced code. */
function enhancedFor(code: number): string {
  if (code === 535) return '5.7.8';
  if (code >= 500) return '5.7.1';
  return code === 421 || code === 454 ? '4.7.0' : '4.3.0';
}

/**
 * The reply for a checked verdict in `hook`: a refusal for reject and defer, an accept reply when an
 * accept's text changes it, null when the hook's own reply stands (accept without text; deliver).
 * `id` is the queue id, for the data hook's accept.
 */
export function verdictReply(hook: HookName, verdict: Verdict | PredeliveryVerdict, id = ''): SmtpReply | null {
  const row = VERDICT_TABLE[hook];
  if (verdict === FAIL_CLOSED) return reply(hook === 'auth' ? 'authPolicyFailed' : 'policyFailed', { hook });
  if (verdict.verdict === 'deliver') return null;
  if (verdict.verdict === 'accept') {
    if (row.accept === null || verdict.text === undefined || verdict.text === '') return null;
    const template = row.acceptText ?? '{text}';
    // The script's own text is what gives way when the reply would be too long: the queue id after it is
    // what the client logs and an operator asks about (cut at the reply's end, it was lost).
    const room = MAX_REPLY_TEXT_BYTES - Buffer.byteLength(fillAccept(template, '', id));
    const text = fillAccept(template, clipUtf8(withoutControls(verdict.text), room), id);
    return reply(row.accept as 'senderAccepted', {}, { text });
  }
  const disconnect = row.disconnects && verdict.disconnect === true;
  const name = verdict.verdict === 'reject' ? row.reject : disconnect ? 'deferredDisconnect' : row.defer;
  const code = verdict.code;
  return reply(name as 'connectRefused', { hook }, {
    code,
    enhanced: verdict.enhanced ?? (code === undefined ? undefined : enhancedFor(code)),
    text: verdict.text,
    disconnect,
  });
}
