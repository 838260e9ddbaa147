/**
 * Bounce messages: an RFC 3464 delivery status notification (multipart/report, RFC 6522) to the envelope
 * sender, naming each failed recipient with its status, the next hop and its reply, followed by the
 * original message's header.
 */
import { randomBytes } from 'node:crypto';
import { isAscii } from 'node:buffer';
import type { SpoolEnvelope } from '../spool/envelope.ts';
import { asciiOrcpt, utf8AddrXtext } from '../delivery/dsn-params.ts';
import { asciiAddress } from '../delivery/wire-envelope.ts';

export interface FailedRecipient {
  recipient: string;
  /** RFC 3463 status, e.g. 5.1.1 (a 4.x.x status for a message that expired while deferred). */
  status: string;
  /** The remote reply, or our own reason. */
  diagnostic: string;
  /** Whether `diagnostic` is a remote SMTP reply. */
  remoteReply: boolean;
  /** `host[address]:port` of the next hop, when one answered. */
  remoteMta: string | null;
  /** The recipient's DSN ORCPT (`rfc822;…`), when RCPT TO had one. */
  orcpt?: string;
}

export interface DsnInput {
  hostname: string;
  original: Pick<SpoolEnvelope, 'id' | 'sender' | 'receivedAt' | 'dsn'>;
  /** The spooled message (our Received header first); its header goes into the report. */
  originalMessage: Buffer;
  failed: FailedRecipient[];
  /** The message outlived delivery.maxAgeHours. */
  expired: boolean;
  /**
   * `success`: a notice for recipients whose RCPT TO asked for one (NOTIFY=SUCCESS), `Action: relayed` (RFC 3461
   * §6.2.3.3): the next hop is not asked for notifications, so this is the last this system can give. `failed`
   * then names those recipients and their next hop's 2yz reply.
   */
  kind?: 'failure' | 'success';
  now?: Date;
}

const MAX_HEADER_BYTES = 64 * 1024;
/** RET=FULL returns a message up to this size whole; a larger one, its header only (with a note). */
export const MAX_RETURNED_BYTES = 1024 * 1024;

export function buildDsn(input: DsnInput): Buffer {
  const now = input.now ?? new Date();
  const host = input.hostname;
  // RFC 2046 §5.1.1: at most 70 characters. A longer one (a long hostname) is cut by readers: Dovecot keeps 80, and
  // then never finds the closing delimiter.
  const boundary = `${input.original.id}.${randomBytes(6).toString('hex')}/${host}`.slice(0, 70);
  const mtaName = (mta: string): string => mta.replace(/\[[^\]]*\](:\d+)?$/, '').replace(/:\d+$/, '');
  const human = input.failed.map((f) => {
    const where = f.remoteReply && f.remoteMta ? `host ${f.remoteMta} said: ` : '';
    return `<${f.recipient}>: ${where}${f.diagnostic}`;
  });
  const success = input.kind === 'success';
  // RFC 3461 §4.3: RET=FULL asks for the whole message in a failure notice. Returned whole only when it is 7-bit
  // as it stands (message/rfc822 may not be quoted-printable, RFC 2046 §5.2.1, and re-encoding its body would break
  // its signatures) and within MAX_RETURNED_BYTES; otherwise its header, and the text part says why.
  const full = !success && input.original.dsn?.ret === 'FULL' ? returnable(input.originalMessage) : null;
  const text = [
    `This is the mail system at host ${host}.`,
    '',
    success
      ? 'Your message was relayed to the following recipients, as you asked to be told. Their next hop was not asked for a further notification.'
      : input.expired
        ? 'Your message could not be delivered to one or more recipients before it expired in the queue.'
        : 'Your message could not be delivered to one or more recipients. It has been returned to you.',
    full === 'whole' ? WHOLE_SENTENCE : HEADER_SENTENCE,
    ...(full && full !== 'whole' ? [`You asked for the whole message (RET=FULL): ${full}, so only its header is returned.`] : []),
    '',
    ...human.flatMap((l) => [...fold(l, 76), '']),
  ].join('\r\n');

  const perRecipient = input.failed.map((f) => [
    // Optional, and it has no place to fold: left out where 7-bit (\x{65E5} for 日) it would pass RFC 5322's 998 characters.
    ...(f.orcpt && asciiOrcpt(f.orcpt).length <= 900 ? [`Original-Recipient: ${asciiOrcpt(f.orcpt)}`] : []),
    `Final-Recipient: ${addressField(f.recipient)}`,
    `Action: ${success ? 'relayed' : 'failed'}`,
    `Status: ${f.status}`,
    ...(f.remoteMta ? [`Remote-MTA: dns; ${mtaName(f.remoteMta)}`] : []),
    // Escaped, then clipped: each non-ASCII character is up to 10 (`\x{HHHHH}`), and 900 of them made a 7,000-character line.
    `Diagnostic-Code: ${f.remoteReply ? 'smtp' : 'X-Postern'}; ${clip(escapeNonAscii(f.diagnostic), 900)}`,
    `Last-Attempt-Date: ${rfc5322Date(now)}`,
  ].join('\r\n'));
  const status = [
    [...(input.original.dsn?.envid ? [`Original-Envelope-Id: ${escapeNonAscii(input.original.dsn.envid)}`] : []),
      `Reporting-MTA: dns; ${host}`, `X-Postern-Queue-ID: ${input.original.id}`, `X-Postern-Sender: ${addressField(input.original.sender)}`,
      `Arrival-Date: ${rfc5322Date(new Date(input.original.receivedAt))}`].join('\r\n'),
    ...perRecipient,
  ].join('\r\n\r\n');

  const headers = originalHeader(input.originalMessage);
  // 7-bit throughout (8-bit parts quoted-printable): a next hop without 8BITMIME is sent no 8-bit content, and a
  // bounce is not one to lose for that (it has the null sender: it would be discarded). So is a returned header with
  // a NUL or a line over RFC 5322's 998 characters (a client's 60 KB header field): next hops refuse such lines.
  const ascii = /^[\x00-\x7f]*$/.test(text);
  const headersAsIs = isAscii(headers) && !headers.includes(0) && !hasLongLine(headers);
  const parts = [
    `Date: ${rfc5322Date(now)}`,
    `From: Mail Delivery System <MAILER-DAEMON@${host}>`,
    // 7-bit when it can be: a UTF-8 domain in its A-labels (a UTF-8 local part has no other form; its bounce needs SMTPUTF8 anyway).
    `To: <${asciiAddress(input.original.sender) ?? input.original.sender}>`,
    `Subject: ${success ? 'Successful Mail Delivery Report' : 'Undelivered Mail Returned to Sender'}`,
    `Message-ID: <${input.original.id}.${randomBytes(4).toString('hex')}.dsn@${host}>`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="${boundary}"`,
    '',
    'This is a MIME-encapsulated message.',
    '',
    `--${boundary}`,
    'Content-Description: Notification',
    `Content-Type: text/plain; charset=${ascii ? 'us-ascii' : 'utf-8'}`,
    ...(ascii ? [] : ['Content-Transfer-Encoding: quoted-printable']),
    '',
    ascii ? text : quotedPrintable(Buffer.from(text)),
    `--${boundary}`,
    'Content-Description: Delivery report',
    'Content-Type: message/delivery-status',
    '',
    status,
    '',
    `--${boundary}`,
    ...(full === 'whole' ? ['Content-Description: Undelivered Message', 'Content-Type: message/rfc822', ''] : [
      `Content-Description: ${success ? 'Message Headers' : 'Undelivered Message Headers'}`,
      'Content-Type: text/rfc822-headers',
      ...(headersAsIs ? [] : ['Content-Transfer-Encoding: quoted-printable']),
      '']),
  ].join('\r\n');
  return Buffer.concat([
    Buffer.from(parts + '\r\n'),
    full === 'whole' ? crlf(input.originalMessage) : headersAsIs ? headers : Buffer.from(quotedPrintable(headers)),
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
}

/**
 * A notice that returns the message whole (RET=FULL), remade with its header only: for a next hop that refused the
 * notice for its size (the sender's next hop may take less than the one that refused the message). Null for a notice
 * that does not return a message whole.
 */
export function headerOnlyNotice(notice: Buffer): Buffer | null {
  const text = notice.toString('latin1');
  const boundary = /^Content-Type: multipart\/report;[^]*?boundary="([^"]+)"/m.exec(text)?.[1];
  if (!boundary) return null;
  const opening = `\r\n--${boundary}\r\nContent-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n\r\n`;
  const start = text.indexOf(opening);
  const end = text.lastIndexOf(`\r\n--${boundary}--\r\n`);
  if (start < 0 || end < start) return null;
  const headers = originalHeader(notice.subarray(start + opening.length, end));
  const headersAsIs = isAscii(headers) && !headers.includes(0) && !hasLongLine(headers);
  // The text part said the message was attached: it says why it is not, in the words a first notice would use.
  const head = text.slice(0, start).replace(WHOLE_SENTENCE, `${HEADER_SENTENCE}\r\n${REFUSED_FOR_SIZE}`);
  return Buffer.concat([
    Buffer.from(`${head}\r\n--${boundary}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n`
      + `${headersAsIs ? '' : 'Content-Transfer-Encoding: quoted-printable\r\n'}\r\n`, 'latin1'),
    headersAsIs ? headers : Buffer.from(quotedPrintable(headers)),
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
}

const WHOLE_SENTENCE = 'The delivery status of each one follows; your message is attached.';
const HEADER_SENTENCE = 'The delivery status of each one follows; the header of your message is attached.';
const REFUSED_FOR_SIZE = 'You asked for the whole message (RET=FULL): this report with it was refused for its size, so only its header is returned.';

/** Whether a message can be returned whole (`whole`), or why not. */
function returnable(message: Buffer): string {
  if (message.length > MAX_RETURNED_BYTES) return `it is larger than ${MAX_RETURNED_BYTES / 1024} KiB`;
  const lines = crlf(message);
  if (!isAscii(lines) || lines.includes(0) || hasLongLine(lines)) return 'it has 8-bit content or lines too long to be returned unencoded';
  return 'whole';
}

/** `data` with CRLF line ends, ending with one. */
function crlf(data: Buffer): Buffer {
  const text = data.toString('latin1').replace(/\r?\n/g, '\r\n');
  return Buffer.from(text.endsWith('\r\n') ? text : `${text}\r\n`, 'latin1');
}

/** A line (CRLF-separated) longer than RFC 5322's 998 characters. */
function hasLongLine(data: Buffer): boolean {
  let start = 0;
  for (let end = data.indexOf('\r\n'); ; end = data.indexOf('\r\n', start)) {
    if ((end < 0 ? data.length : end) - start > 998) return true;
    if (end < 0) return false;
    start = end + 2;
  }
}

/** RFC 2045 §6.7 quoted-printable of CRLF-separated text (its line ends kept as line ends), lines within 76 characters. */
export function quotedPrintable(data: Buffer): string {
  const text = data.toString('latin1');
  return text.split('\r\n').map((line) => {
    let out = '';
    let width = 0;
    for (let i = 0; i < line.length; i++) {
      const b = line.charCodeAt(i);
      const literal = (b >= 33 && b <= 126 && b !== 61) || ((b === 32 || b === 9) && i < line.length - 1);
      const piece = literal ? line[i]! : `=${b.toString(16).toUpperCase().padStart(2, '0')}`;
      if (width + piece.length > 75) { out += '=\r\n'; width = 0; }
      out += piece;
      width += piece.length;
    }
    return out;
  }).join('\r\n');
}

/**
 * The header block of a message (up to the empty line), with CRLF line ends, at most MAX_HEADER_BYTES. A longer one is
 * cut before the last header field that does not fit whole: cut at the byte, it ended in half a field (a folded field
 * without its last lines, a field name alone), half a UTF-8 character, or a CR without its LF (a bare CR, which the
 * CRLF added after it made a line end of its own).
 */
function originalHeader(message: Buffer): Buffer {
  let end = message.indexOf('\r\n\r\n');
  if (end < 0) end = message.indexOf('\n\n');
  if (end < 0) end = message.length;
  const head = end <= MAX_HEADER_BYTES ? message.subarray(0, end) : message.subarray(0, wholeFieldsWithin(message, MAX_HEADER_BYTES));
  const text = head.toString('latin1').replace(/\r?\n/g, '\r\n');
  return Buffer.from(text.endsWith('\r\n') ? text : `${text}\r\n`, 'latin1');
}

/**
 * Where to cut a header section longer than `limit` bytes: after the last whole field within it (its line end and
 * any folded lines included); without one (a first field over the limit), after its last whole line; without that
 * (no line end within the limit), before the UTF-8 character at the limit, and before a CR just ahead of it.
 */
function wholeFieldsWithin(header: Buffer, limit: number): number {
  // A field starts after a line end, at a character other than a space or tab (a folded line's continuation).
  for (let nl = header.lastIndexOf(0x0a, limit); nl >= 0; nl = header.lastIndexOf(0x0a, nl - 1)) {
    const next = header[nl + 1];
    if (nl + 1 <= limit && next !== 0x20 && next !== 0x09) return nl + 1;
  }
  const line = header.lastIndexOf(0x0a, limit - 1);
  if (line >= 0) return line + 1;
  let cut = limit;
  while (cut > 0 && (header[cut]! & 0xc0) === 0x80) cut--; // a continuation byte: back to its character's first
  return header[cut - 1] === 0x0d ? cut - 1 : cut;
}

/** Longest piece of one word on a line of the text part (RFC 5322: 998 characters a line at most). */
const MAX_WORD = 900;

/**
 * `line` broken at spaces into lines of about `width` characters, the following ones indented; a word longer
 * than MAX_WORD is cut in pieces. (Folding used to look for a space in the indentation it had just added: a
 * word over 72 characters on a continuation line — a long address in "550 5.1.1 <…>: User unknown", any
 * next hop's long token — made it add the same line for ever, and the queue process hung, growing, at the bounce.)
 */
function fold(line: string, width: number): string[] {
  const out: string[] = [];
  let current = '';
  for (const word of line.split(' ')) {
    let rest = word;
    do {
      // Not between the two halves of a character outside the BMP (an emoji): each half alone became U+FFFD.
      const at = isHighSurrogate(rest.charCodeAt(MAX_WORD - 1)) ? MAX_WORD - 1 : MAX_WORD;
      const piece = rest.slice(0, at);
      rest = rest.slice(at);
      if (current.trim() && current.length + 1 + piece.length > width) {
        out.push(current);
        current = `    ${piece}`;
      } else {
        current = current ? `${current} ${piece}` : piece;
      }
    } while (rest.length);
  }
  out.push(current);
  return out;
}

function isHighSurrogate(unit: number): boolean {
  return unit >= 0xd800 && unit <= 0xdbff;
}

/**
 * The delivery-status part is 7-bit (RFC 3464 §2.1.1): a UTF-8 address is written as RFC 6533's `utf-8` address
 * type, its non-ASCII characters as `\x{HHHH}`, and so is any non-ASCII character of a diagnostic.
 */
function addressField(address: string): string {
  if (isAscii(Buffer.from(address))) return `rfc822; ${address}`;
  return `utf-8; ${utf8AddrXtext(address)}`;
}

function escapeNonAscii(s: string): string {
  return s.replace(/[^\x00-\x7f]/gu, (c) => `\\x{${c.codePointAt(0)!.toString(16).toUpperCase()}}`);
}

function clip(s: string, n: number): string {
  const one = s.replace(/[\r\n]+/g, ' ');
  // Not in the middle of an escape (`\x{6` would read as a backslash and text).
  return one.length > n ? `${one.slice(0, n).replace(/\\(x(\{[0-9A-F]*)?)?$/, '')}...` : one;
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** RFC 5322 date in UTC, e.g. `Tue, 1 Jul 2025 10:00:00 +0000`. */
export function rfc5322Date(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}
