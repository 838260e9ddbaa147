/**
 * DSN parameters (RFC 3461) passed on to a next hop that offers DSN: RET and ENVID on MAIL FROM, each
 * recipient's own NOTIFY and ORCPT on its RCPT TO. nodemailer takes one NOTIFY and one ORCPT for every recipient
 * of a transaction; its RCPT TO arguments come from `_getDsnRcptToArgs()`, called as each RCPT is written, after
 * the recipient joined `_recipientQueue`: replaced on the connection for each transaction, it answers per recipient.
 * Without this a recipient's NOTIFY=NEVER was not passed on (the next hop bounced to the sender all the same) and
 * its ORCPT was lost.
 */
import type SMTPConnection from 'nodemailer/lib/smtp-connection';

export interface RecipientDsn { notify?: string[]; orcpt?: string }

export interface TransactionDsn {
  ret?: 'FULL' | 'HDRS';
  envid?: string;
  /** By recipient as queued. */
  recipients: Map<string, RecipientDsn>;
}

interface Internals { _supportedExtensions: string[]; _recipientQueue: string[]; _getDsnRcptToArgs(): string }

/** RFC 3461 §4 xtext: "+", "=", and anything outside "!" to "~", as "+HH" of its UTF-8 bytes. */
export function xtext(value: string): string {
  let out = '';
  for (const b of Buffer.from(value, 'utf8')) out += b < 0x21 || b > 0x7e || b === 0x2b || b === 0x3d ? `+${b.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(b);
  return out;
}

/** The recipient's RCPT TO arguments (with their leading space), or ''. An ORCPT that is not ASCII is not passed on (RFC 6533 is another encoding). */
export function rcptArgs(dsn: RecipientDsn | undefined): string {
  const args: string[] = [];
  if (dsn?.notify?.length) args.push(`NOTIFY=${dsn.notify.map((n) => n.toUpperCase()).join(',')}`);
  // eslint-disable-next-line no-control-regex
  if (dsn?.orcpt && /^[\x21-\x7e]+;[\x20-\x7e]+$/.test(dsn.orcpt)) args.push(`ORCPT=${xtext(dsn.orcpt)}`);
  return args.length ? ` ${args.join(' ')}` : '';
}

/**
 * Set `conn` up for one transaction: whether the next hop offers DSN (then the MAIL FROM parameters to give
 * nodemailer, and each RCPT TO's own). `forRecipient` maps a recipient as sent to its parameters.
 */
export function passDsnOn(conn: SMTPConnection, dsn: TransactionDsn | undefined, forRecipient: (sent: string) => RecipientDsn | undefined): { offered: boolean; mailFrom?: { ret?: string; envid?: string } } {
  const internals = conn as unknown as Internals;
  const offered = (internals._supportedExtensions ?? []).includes('DSN');
  internals._getDsnRcptToArgs = () => (offered ? rcptArgs(forRecipient(internals._recipientQueue.at(-1) ?? '')) : '');
  if (!offered || !dsn || (!dsn.ret && !dsn.envid)) return { offered };
  return { offered, mailFrom: { ...(dsn.ret ? { ret: dsn.ret } : {}), ...(dsn.envid ? { envid: dsn.envid } : {}) } };
}
