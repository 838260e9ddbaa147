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
]);

/** The catalogue reply for smtp-server's own `code text`, or null when the catalogue does not name it. */
export function catalogueReplyFor(code: number, data: string | string[] | null | undefined): SmtpReply | null {
  if (typeof data !== 'string') return null;
  const name = BY_TEXT.get(`${code} ${data}`);
  return name === undefined ? null : reply(name as 'needMail'); // each takes no values
}
