/**
 * The built-in relay rule's refusal as a reply, for a listener's RCPT TO and a policy service's answer alike: an
 * unknown recipient of a local domain (localRecipients) is Postfix's `550 5.1.1 … User unknown in local recipient
 * table` (450 4.1.1 with `unknownRecipientReply: defer`), anything else `554 5.7.1 … Relay access denied`. Null: the rule
 * accepted.
 */
import type { BuiltinRelayDecision } from '../sandbox/api/index.ts';
import type { SmtpReply } from './reply.ts';
import { reply } from './replies.ts';

export function relayRefusal(recipient: string, builtin: BuiltinRelayDecision, unknownRecipientReply: 'reject' | 'defer'): SmtpReply | null {
  if (builtin.accepted) return null;
  if (builtin.reason !== 'unknown-recipient') return reply('relayDenied', { rcpt: recipient });
  return reply(unknownRecipientReply === 'defer' ? 'unknownLocalRecipientDeferred' : 'unknownLocalRecipient', { rcpt: recipient });
}
