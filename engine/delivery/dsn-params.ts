/**
 * DSN parameters (RFC 3461) passed on to a next hop that offers DSN: RET and ENVID on MAIL FROM, each
 * recipient's own NOTIFY and ORCPT on its RCPT TO. nodemailer takes one NOTIFY and one ORCPT for every recipient
 * of a transaction; its RCPT TO arguments come from `_getDsnRcptToArgs()`, called as each RCPT is written, after
 * the recipient joined `_recipientQueue`: replaced on the connection for each transaction, it answers per recipient.
 * Without this a recipient's NOTIFY=NEVER was not passed on (the next hop bounced to the sender all the same) and
 * its ORCPT was lost.
 */
import { isUtf8 } from 'node:buffer';
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

/** RFC 6533 utf-8-addr-xtext of a UTF-8 address: its non-ASCII characters, "+", "=" and "\\" as `\x{HHHH}`. */
export function utf8AddrXtext(address: string): string {
  return address.replace(/[^\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]/gu, (c) => `\\x{${c.codePointAt(0)!.toString(16).toUpperCase()}}`);
}

/**
 * An ORCPT as 7-bit text: one that is not ASCII as RFC 6533's `utf-8` address type with `\x{HHHH}` escapes, the
 * 7-bit form a next hop takes with or without SMTPUTF8 (RFC 6533 §3). A client's xtext `+HH` arrives decoded byte
 * by byte (smtp-server): when those bytes are UTF-8, they are read as such.
 */
export function asciiOrcpt(orcpt: string): string {
  if (/^[\x00-\x7f]*$/.test(orcpt)) return orcpt;
  const semi = orcpt.indexOf(';');
  let address = orcpt.slice(semi + 1);
  const bytes = /^[\x00-\xff]*$/.test(address) ? Buffer.from(address, 'latin1') : null;
  if (bytes && isUtf8(bytes)) address = bytes.toString('utf8');
  // A utf-8 type's `\x{…}` escapes are kept as they are; another type's address is a plain mailbox.
  const utf8Type = orcpt.slice(0, semi).toLowerCase() === 'utf-8';
  return `utf-8;${utf8Type ? address.split(/(\\x\{[0-9A-Fa-f]{1,6}\})/).map((p, i) => (i % 2 ? p : utf8AddrXtext(p))).join('') : utf8AddrXtext(address)}`;
}

/** RFC 3461 §4.2: the longest ORCPT value. */
const MAX_ORCPT = 500;

/** The recipient's RCPT TO arguments (with their leading space), or ''. */
export function rcptArgs(dsn: RecipientDsn | undefined): string {
  const args: string[] = [];
  if (dsn?.notify?.length) args.push(`NOTIFY=${dsn.notify.map((n) => n.toUpperCase()).join(',')}`);
  const orcpt = dsn?.orcpt && asciiOrcpt(dsn.orcpt);
  // eslint-disable-next-line no-control-regex
  const encoded = orcpt && /^[\x21-\x7e]+;[\x20-\x7e]+$/.test(orcpt) ? xtext(orcpt) : '';
  // RFC 3461 §4.2: 500 characters at most. Written 7-bit (\x{65E5} for 日, +2B for +) an ORCPT taken within 500 can be
  // longer, and a next hop refused the RCPT for it (Postern: 501 5.5.4): the recipient bounced. It is optional; left out.
  if (encoded && encoded.length <= MAX_ORCPT) args.push(`ORCPT=${encoded}`);
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
  // Printable US-ASCII only (RFC 3461 §4.4; refused at MAIL FROM since, spooled so by an earlier release): a next hop
  // refuses MAIL FROM for another (Postfix: 501), and the message would bounce for an optional parameter.
  const envid = dsn?.envid && /^[\x20-\x7e]+$/.test(dsn.envid) ? dsn.envid : undefined;
  if (!offered || !dsn || (!dsn.ret && !envid)) return { offered };
  return { offered, mailFrom: { ...(dsn.ret ? { ret: dsn.ret } : {}), ...(envid ? { envid } : {}) } };
}
