/**
 * RCPT commands accepted in a transaction, a recipient named again counted again, as Postfix's smtpd_recipient_limit
 * counts them: smtp-server takes one named again as a replacement, never over maxRecipients, so RCPT TO of one
 * address was accepted without end in one transaction, each running the rcptto script, where every other command a
 * session can repeat is bounded. One rule for the listener (PosternConnection) and `postern try` (address-command.ts).
 */
import type { SMTPServerSession } from 'smtp-server';

/**
 * smtp-server's own reply to a recipient over maxRecipients, written by `connection` (its send(code, text, context),
 * which gives it 4.5.3), past the count too. (test/smtp/reply-catalogue reads this send too.)
 */
export function refuseTooMany(connection: { send(code: number, data: string, context: string): void }): void {
  connection.send(452, 'Error: too many recipients', 'TOO_MANY_RECIPIENTS');
}

export class RecipientCount {
  /** The transaction counted: smtp-server makes a new envelope object for each. */
  #envelope: object | null = null;
  #accepted = 0;

  /** A RCPT of the session's transaction was accepted. */
  accepted(session: SMTPServerSession): void {
    if (this.#envelope !== session.envelope) {
      this.#envelope = session.envelope;
      this.#accepted = 0;
    }
    this.#accepted++;
  }

  /** The session's transaction has had its `maxRecipients` RCPTs accepted (0: no limit): the next gets refuseTooMany(). */
  full(session: SMTPServerSession, maxRecipients: number): boolean {
    const accepted = this.#envelope === session.envelope ? this.#accepted : 0;
    return maxRecipients > 0 && !!session.envelope.mailFrom && accepted >= maxRecipients;
  }
}
