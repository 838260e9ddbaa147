/**
 * The most Received header fields a message may carry when it leaves (Postfix hopcount_limit): more is a mail loop.
 * The queue bounces such a message (engine/queue/runner.ts); the SMTP intake refuses one that would reach it with
 * our own Received field, so that a client cannot have a message accepted only to be bounced, to a sender it forged.
 */
import type { SmtpReply } from './reply.ts';
import { reply } from './replies.ts';

export const MAX_HOPS = 50;

/** The refusal of a message whose header section holds `received` Received fields, ours to come: null within the limit. */
export function hopLimitRefusal(received: number): SmtpReply | null {
  return received + 1 > MAX_HOPS ? reply('tooManyHops', { hops: String(received) }) : null;
}
