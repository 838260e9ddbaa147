/**
 * SMTPUTF8 on MAIL FROM for a message that needs it though its addresses are ASCII (a UTF-8 header: wire-envelope.ts).
 * nodemailer adds the parameter only when an envelope address is not ASCII, and has no option for it; this wraps the
 * connection's command writer once and adds it to the MAIL FROM of each transaction whose `declare` says so (a pooled
 * connection carries other messages too, as passDsnOn sets its own hook per transaction).
 */
import type SMTPConnection from 'nodemailer/lib/smtp-connection';

interface Internals {
  _sendCommand(command: string, logged?: string): void;
  _usingSmtpUtf8?: boolean;
  /** This transaction's MAIL FROM declares SMTPUTF8 (set per transaction; the wrapper reads it). */
  posternDeclareUtf8?: boolean;
  posternWrapped?: true;
}

export function declareUtf8OnMailFrom(conn: SMTPConnection, declare: boolean): void {
  const internals = conn as unknown as Internals;
  internals.posternDeclareUtf8 = declare;
  if (!declare || internals.posternWrapped) return;
  internals.posternWrapped = true;
  const send = internals._sendCommand.bind(conn);
  internals._sendCommand = (command: string, logged?: string): void => {
    if (internals.posternDeclareUtf8 && command.startsWith('MAIL FROM:') && !/ SMTPUTF8(?: |$)/i.test(command)) {
      command += ' SMTPUTF8';
      internals._usingSmtpUtf8 = true;
    }
    send(command, logged);
  };
}
