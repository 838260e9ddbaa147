/**
 * A next hop's reply that is no reply in SMTP's form (RFC 5321 §4.2: a code of three digits, 2 to 5 first, on each of
 * its lines, the same on all of them, "-" after it on all but the last) is no verdict. nodemailer reads only the
 * first character of a reply, the outcome the first line's code, where Postfix reads the last line's: "250-ok" then
 * "550 5.1.1 no such user" to RCPT made the recipient accepted, and the 250 to the final dot recorded it delivered,
 * though the next hop had refused it (the message lost for that recipient, and no bounce); "250-queued" then "451
 * failed" to the dot, or "2.1.5 ok" to RCPT, likewise. Neither line can be trusted over the other: such a reply is
 * handed on marked, starting with no reply code, so that every step takes it for a failure without one (RCPT: that
 * recipient deferred; the final dot: a reply that says nothing, deferred as the next hop may have the message;
 * EHLO, MAIL, DATA, the greeting: the session's or the transaction's failure), its lines kept for the logs.
 */
import type SMTPConnection from 'nodemailer/lib/smtp-connection';

const MARK = 'malformed reply (';

/** What is wrong with a whole reply (its lines joined with "\n"), or null: a well-formed one. */
export function replyFault(reply: string): string | null {
  const lines = reply.split('\n');
  const code = /^[2-5]\d\d(?=[ -]|$)/.exec(lines[0]!)?.[0];
  if (!code) return 'no reply code';
  const ok = lines.every((line, i) => (i < lines.length - 1 ? line.startsWith(`${code}-`) : line === code || line.startsWith(`${code} `)));
  if (ok) return null;
  return lines.length > 1 && lines.every((line) => /^\d{3}(?:[ -]|$)/.test(line)) ? 'its lines do not share one reply code' : 'a line without its reply code';
}

/** A marked reply as `<what is wrong>: <its lines, on one line>`; null for a reply that is not marked. */
export function malformedReply(reply: string | undefined): string | null {
  if (!reply?.startsWith(MARK)) return null;
  const end = reply.indexOf('): ');
  return `${reply.slice(MARK.length, end)}: ${reply.slice(end + 3).replace(/\n/g, ' ')}`;
}

interface Internals {
  _processResponse(): unknown;
  /** Replies read and not processed yet: each whole reply one string, its lines joined with "\n". */
  _responseQueue?: unknown[];
}

/** Mark the connection's malformed replies before nodemailer acts on them. */
export function markMalformedReplies(conn: SMTPConnection): void {
  const internals = conn as unknown as Internals;
  const processResponse = internals._processResponse.bind(conn);
  internals._processResponse = () => {
    const queue = internals._responseQueue;
    const next = queue?.[0];
    // Only a whole reply: one whose last line is a continuation waits for the rest (nodemailer puts it back). Blank
    // ones nodemailer skips.
    if (typeof next === 'string' && next.trim() && !/(?:^|\n)\d+-[^\n]*$/.test(next) && !next.startsWith(MARK)) {
      const fault = replyFault(next);
      if (fault) queue![0] = `${MARK}${fault}): ${next}`;
    }
    return processResponse();
  };
}

/** Whether a reply was marked malformed (markMalformedReplies). */
export function isMarkedMalformed(reply: string): boolean {
  return reply.startsWith(MARK);
}
