/**
 * Refusals smtp-server makes from inside its own code, sent as the catalogue's reply of the same code (replies.ts):
 * logged with the catalogue's reason (why, not "SMTP protocol rule") and, where its text said nothing to a client
 * (`Error: invalid userdata`), with the catalogue's text. Keyed by smtp-server's code and text.
 */
import { reply, type ReplyName } from './replies.ts';
import type { SmtpReply } from './reply.ts';

const BY_TEXT: ReadonlyMap<string, ReplyName> = new Map([
  ['500 Error: command not recognized', 'commandNotRecognized'],
  ['503 Error: send HELO/EHLO first', 'heloFirst'],
  ['503 Error: need MAIL command', 'needMail'],
  ['503 Error: need RCPT command', 'needRcpt'],
  ['503 Error: nested MAIL command', 'nestedMail'],
  ['501 Error: Bad sender address syntax', 'senderSyntax'],
  ['501 Error: Bad recipient address syntax', 'recipientSyntax'],
  ['501 Error: syntax: STARTTLS', 'starttlsSyntax'],
  ['503 Error: TLS already active', 'tlsAlreadyActive'],
  ['501 Error: Syntax: VRFY address', 'vrfySyntax'],
  ['501 Error: syntax: AUTH PLAIN token', 'authPlainSyntax'],
  ['501 Error: syntax: AUTH LOGIN', 'authLoginSyntax'],
  ['550 Error: Not allowed', 'proxyCommandNotAllowed'],
  ['501 Error: invalid userdata', 'authMalformed'],
  ['501 Error: missing username', 'authMalformed'],
  // smtp-server writes these without an enhanced code (its HELO and EHLO replies, and one to any command).
  ['501 Error: Syntax: HELO hostname', 'heloSyntax'],
  ['501 Error: syntax: EHLO hostname', 'ehloSyntax'],
  ['501 Error: Bad hostname syntax', 'heloNameSyntax'],
  ['421 Server shutting down', 'shuttingDown'],
]);

/** What held the greeting back when a client talked first: the greeting delay, or the checks of its connection. */
export type GreetingWait = 'delay' | 'checks';

/**
 * The reason's words for each: a client that sends its EHLO with the PROXY header, or at once on a listener without
 * a greeting delay, talks during the checks (a reverse lookup takes its time), and greetingDelayMs had no part in it.
 */
export const GREETING_HELD_BY: Readonly<Record<GreetingWait, string>> = {
  delay: 'limits.greetingDelayMs',
  checks: 'the checks of its connection (reverse lookup, connection limits, connect script)',
};

/**
 * The catalogue reply for smtp-server's own `code text`, or null when the catalogue does not name it. `hostname`: the
 * listener's, which some of its texts start with; `greetingWait`: what the greeting waited for (its 421 You talk too soon).
 */
export function catalogueReplyFor(code: number, data: string | string[] | null | undefined, hostname: string, greetingWait: GreetingWait): SmtpReply | null {
  if (typeof data !== 'string') return null;
  const name = BY_TEXT.get(`${code} ${data}`);
  if (name !== undefined) return reply(name as 'needMail'); // each takes no values
  if (code === 421 && data === `${hostname} You talk too soon`) {
    return reply('talkedTooSoon', { hostname, heldBy: GREETING_HELD_BY[greetingWait] });
  }
  return null;
}

/** The commands whose replies smtp-server writes without an enhanced status code (its SKIPPED_COMMANDS_FOR_ENHANCED_STATUS_CODES). */
const NO_ENHANCED_CODE_FOR: ReadonlySet<string> = new Set(['HELO', 'EHLO', 'LHLO']);

/**
 * The context for smtp-server's send() of a refusal of its own the catalogue does not name: with ENHANCEDSTATUSCODES
 * offered, a refusal carries an enhanced code, so one smtp-server would write without (`false`, or a reply to HELO or
 * EHLO) gets the default of its code (501: 5.5.4), as every other reply it writes does.
 */
export function refusalContext(code: number, context: string | false | undefined): string | false | undefined {
  return code >= 400 && (context === false || (context !== undefined && NO_ENHANCED_CODE_FOR.has(context))) ? undefined : context;
}
