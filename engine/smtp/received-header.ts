/**
 * The Received header Postern prepends (RFC 5321 §4.4), with the TLS and client-certificate comments
 * Postfix writes (smtpd_tls_received_header) and the RFC 3848 protocol name (ESMTPSA when authenticated).
 */
import { domainToASCII } from 'node:url';
import { envelopeDomain } from '../policy/domain-key.ts';
import type { ConnectionState } from './connection-state.ts';

/** What the header says about the client: the same for every message of a connection while they hold. */
export interface ReceivedClientFacts {
  helo: string | null;
  heloCommand: 'HELO' | 'EHLO';
  clientHostname: string | null;
  remoteAddress: string;
  tls: { protocol: string; cipher: string; bits?: number } | null;
  state: ConnectionState;
  /**
   * The transaction declared SMTPUTF8 (RFC 6531): the header may carry UTF-8, and its protocol is the
   * UTF8SMTP family (§3.7.7). Otherwise the header is 7-bit, whatever the client sent (see ascii()).
   */
  utf8?: boolean;
}

export interface ReceivedFacts extends ReceivedClientFacts {
  hostname: string;
  queueId: string;
  recipients: string[];
  date?: Date;
}

/**
 * A name as the header shows it: no control, no quote or parenthesis that would end the comment it sits in. The C1
 * controls (NEL among them) and U+2028/U+2029 too, which an SMTPUTF8 message otherwise kept: readers that split lines
 * the Unicode way (Python's str.splitlines()) broke the field there, and a client's AUTH name accepted by a script
 * (`dév<U+2028>X-Spam-Flag: NO`) or its certificate's CN became a field of its choosing in our own trace header.
 */
// eslint-disable-next-line no-control-regex
const clean = (s: string): string => s.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029"\\()]/g, '?');

/**
 * For a message that is not SMTPUTF8 the header must be 7-bit (RFC 5322; a next hop without 8BITMIME or
 * SMTPUTF8 could not carry it): each non-ASCII character becomes "?", as Postfix's printable() writes a
 * name it cannot show. The full name stays in the logs and in what scripts see.
 */
const ascii = (s: string): string => clean(s).replace(/[^\x20-\x7e]/gu, '?');

/** A UTF-8 HELO name that is a valid IDN (letters, digits, hyphens once in A-labels) is written as its A-labels (xn--…), anything else non-ASCII as "?". */
function asciiHelo(helo: string): string {
  if (!/[^\x00-\x7f]/.test(helo)) return clean(helo);
  const aLabel = domainToASCII(helo);
  return /^[a-z0-9-]+(\.[a-z0-9-]+)*\.?$/.test(aLabel) ? aLabel : ascii(helo);
}

/**
 * A certificate name as the header shows it: at most 64 characters (RFC 5280's upper bound for a CN), then
 * "...". A client's self-signed certificate may carry a name of tens of kilobytes; the header's line must
 * stay within RFC 5322's 998 characters, or the next hop breaks it where the client chose.
 */
const MAX_NAME = 64;
function shortName(s: string, text: (s: string) => string, max = MAX_NAME): string {
  if (s.length <= max) return text(s);
  return `${text(Array.from(s).slice(0, max).join(''))}...`;
}

/**
 * The logged-in name likewise: a client's AUTH username (up to 12 KB in one AUTH line), accepted by an auth
 * script, or a script's accept({ username }) may be any length. 240 characters of up to 4 bytes fit one line.
 */
const MAX_USER = 240;

/** The lines about the client, from "Received: from" to the authenticated sender, and the protocol name. */
export function receivedClientPart(f: ReceivedClientFacts): { lines: string; protocol: string } {
  const st = f.state;
  const protocol = `${f.utf8 ? 'UTF8' : f.heloCommand === 'EHLO' ? 'E' : ''}SMTP${f.tls ? 'S' : ''}${st.user ? 'A' : ''}`;
  const text = f.utf8 ? clean : ascii;
  // Without a PTR name smtp-server's hostname is "[ip]"; Postfix then writes "unknown".
  const rdns = f.clientHostname && !f.clientHostname.startsWith('[') ? f.clientHostname : 'unknown';
  const helo = f.helo ?? 'unknown';
  const lines = [`Received: from ${f.utf8 ? clean(helo) : asciiHelo(helo)} (${text(rdns)} [${f.remoteAddress}])`];
  if (f.tls) {
    lines.push(`\t(using ${clean(f.tls.protocol)} with cipher ${clean(f.tls.cipher)}${f.tls.bits ? ` (${f.tls.bits}/${f.tls.bits} bits)` : ''})`);
    const cert = st.certificate;
    if (cert) {
      const cn = cert.subject.CN ?? cert.subject.dn;
      const issuer = cert.issuer.CN ?? cert.issuer.dn;
      lines.push(`\t(Client CN "${shortName(cn, text)}", Issuer "${shortName(issuer, text)}" (${cert.verified ? 'verified OK' : 'not verified'}))`);
    } else {
      lines.push(st.certificateRequested ? '\t(Client did not present a certificate)' : '\t(No client certificate requested)');
    }
  }
  if (st.user) lines.push(`\t(Authenticated sender: ${shortName(st.user, text, MAX_USER)})`);
  return { lines: lines.join('\r\n') + '\r\n', protocol };
}

/** The header for one message, given its client part (built once per connection, see receivedClientPart()). */
export function receivedHeaderWith(client: { lines: string; protocol: string }, f: Pick<ReceivedFacts, 'hostname' | 'queueId' | 'recipients' | 'date'>): string {
  return receivedHeaderStart(client, f.hostname) + receivedHeaderEnd(f);
}

/** The header up to the queue id: the same for every message of a connection (kept with its client part). */
export function receivedHeaderStart(client: { lines: string; protocol: string }, hostname: string): string {
  return `${client.lines}\tby ${hostname} (Postern) with ${client.protocol} id `;
}

/**
 * A recipient whose local part is ASCII with its domain in A-labels: in an SMTPUTF8 message such an address can
 * still go to a next hop without SMTPUTF8 (wire-envelope.ts), and a U-label in this header would then make the
 * header need SMTPUTF8 (the message bounced for our own trace field). A UTF-8 local part is kept: it needs SMTPUTF8.
 */
function downgradable(address: string): string {
  const at = address.lastIndexOf('@');
  // eslint-disable-next-line no-control-regex
  if (at < 0 || /[^\x00-\x7f]/.test(address.slice(0, at)) || !/[^\x00-\x7f]/.test(address)) return address;
  return `${address.slice(0, at)}@${envelopeDomain(address.slice(at + 1), false) || address.slice(at + 1)}`;
}

/** The rest of the header, for one message: its queue id, its recipient when it has one only, and the date. */
export function receivedHeaderEnd(f: Pick<ReceivedFacts, 'queueId' | 'recipients' | 'date'>): string {
  const forClause = f.recipients.length === 1 ? `\r\n\tfor <${clean(downgradable(f.recipients[0]!))}>` : '';
  return `${f.queueId}${forClause};\r\n\t${f.date ? rfc5322Date(f.date) : currentDate()}\r\n`;
}

/** The date of the current second: it reads the same for every message of that second, so it is built once per second. */
let dateSecond = Number.NaN;
let dateText = '';
function currentDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateText = rfc5322Date(new Date(now));
    dateSecond = second;
  }
  return dateText;
}

export function receivedHeader(f: ReceivedFacts): string {
  return receivedHeaderWith(receivedClientPart(f), f);
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

export function rfc5322Date(d: Date): string {
  const off = -d.getTimezoneOffset();
  const sign = off >= 0 ? '+' : '-';
  const abs = Math.abs(off);
  const pad = (n: number): string => String(n).padStart(2, '0');
  return `${DAYS[d.getDay()]}, ${d.getDate()} ${MONTHS[d.getMonth()]} ${d.getFullYear()} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${sign}${pad(Math.floor(abs / 60))}${pad(abs % 60)}`;
}
