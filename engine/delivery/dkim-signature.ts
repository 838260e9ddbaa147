/**
 * The DKIM-Signature header field for a message (RFC 6376, relaxed/relaxed; rsa-sha256 or ed25519-sha256,
 * RFC 8463), made with node:crypto. Written here rather than taken from mailauth because a signer must
 * over-sign (RFC 6376 §5.4.2, §8.15), which mailauth's cannot: its h= names each field only as often as the
 * message has it, so anyone on the path could add a second From:, Subject: or a Reply-To: above the signed
 * ones (mail clients show the top one, verifiers check the bottom one) and the signature still verified.
 * Here the fields a reader sees are named once more than they occur, so an added instance breaks it.
 * The message must already have CRLF line ends (dkim.ts withCrlf): what is signed is what is sent.
 */
import { createHash, sign, type KeyObject } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';

/** Signed when present: the fields RFC 6376 §5.4.1 suggests, the MIME ones, and the list fields of RFC 2369/8058. */
const SIGNED = [
  'from', 'sender', 'reply-to', 'subject', 'date', 'message-id', 'to', 'cc', 'mime-version', 'content-type',
  'content-transfer-encoding', 'content-id', 'content-description', 'resent-date', 'resent-from', 'resent-sender',
  'resent-to', 'resent-cc', 'resent-message-id', 'in-reply-to', 'references', 'list-id', 'list-help',
  'list-unsubscribe', 'list-unsubscribe-post', 'list-subscribe', 'list-post', 'list-owner', 'list-archive', 'bimi-selector',
];
/**
 * Named once more than they occur, also when absent: what a reader is shown or how the body is read. No relay
 * adds these to signed mail, so an added one is a forgery (rspamd's `(o)` fields, plus the MIME ones).
 */
const OVERSIGNED_ALWAYS = new Set(['from', 'reply-to', 'subject', 'to', 'cc', 'mime-version', 'content-type', 'content-transfer-encoding']);
/** Named once more than they occur when present: a relay may add a missing Date: or Message-ID: (RFC 5321 §6.4). */
const OVERSIGNED_PRESENT = new Set(['sender', 'date', 'message-id', 'in-reply-to', 'references']);

export interface SigningKey {
  domain: string;
  selector: string;
  algorithm: 'rsa-sha256' | 'ed25519-sha256';
  privateKey: KeyObject;
}

/** Bytes of the body hashed per turn of the event loop (extended past a run of WSP or a CR, see pieceEnd). */
const BODY_PIECE_BYTES = 256 * 1024;

/** A message that no retry can sign: its content is the problem, not the key. */
export class UnsignableMessage extends Error {}

/** The `DKIM-Signature: …` field, CRLF-terminated, for `message` (CRLF line ends). Throws UnsignableMessage unless it has one From: field. */
export async function dkimSignatureField(message: Buffer, key: SigningKey, now: Date = new Date()): Promise<string> {
  const split = headerEnd(message);
  const fields = headerFields(message.subarray(0, split.header).toString('latin1'));
  const froms = fields.filter((f) => f.key === 'from').length;
  // None: nothing to sign for (§5.4). Two: a verifier or DMARC check may take one and the reader's client show the
  // other (RFC 7489 §6.6.1), so the signature would vouch for an author it does not cover; rspamd does not sign it.
  if (froms !== 1) throw new UnsignableMessage(`the message has ${froms} From: header fields (exactly one is signed, RFC 5322 §3.6)`);
  const names = signedNames(fields);
  const bh = await bodyHash(message.subarray(split.body));
  const tags = [
    'v=1;', `a=${key.algorithm};`, 'c=relaxed/relaxed;', `d=${key.domain};`, `s=${key.selector};`,
    `t=${Math.floor(now.getTime() / 1000)};`, ...hTag(names.all), `bh=${bh};`, 'b=',
  ];
  const unsigned = fold('DKIM-Signature:', tags);
  // The selected instances in h= order; the header being made last, with b= empty and no CRLF (§3.7).
  const data = names.instances.map((f) => relaxedField(f) + '\r\n').join('') + relaxedField(unsigned);
  const input = Buffer.from(data, 'latin1');
  const b = key.algorithm === 'rsa-sha256'
    ? sign('sha256', input, key.privateKey)
    : sign(null, createHash('sha256').update(input).digest(), key.privateKey); // RFC 8463 §3: Ed25519 over the SHA-256 hash
  return unsigned + foldBase64(b.toString('base64'), lastLineLength(unsigned)) + '\r\n';
}

/** Where the header section ends (after its last field's CRLF) and the body begins. */
function headerEnd(message: Buffer): { header: number; body: number } {
  if (message[0] === 0x0d && message[1] === 0x0a) return { header: 0, body: 2 };
  const blank = message.indexOf('\r\n\r\n', 0, 'latin1');
  return blank < 0 ? { header: message.length, body: message.length } : { header: blank + 2, body: blank + 4 };
}

interface Field { key: string; text: string }

/** The header section's fields, continuation lines joined (with their CRLF) to the field they continue. */
function headerFields(header: string): Field[] {
  const fields: Field[] = [];
  for (const line of header.split('\r\n')) {
    if ((line[0] === ' ' || line[0] === '\t') && fields.length) fields[fields.length - 1]!.text += '\r\n' + line;
    else if (line) fields.push({ key: '', text: line });
  }
  for (const f of fields) {
    // A field name is printable ASCII but the colon (RFC 5322 §3.6.8). WSP before the colon (obsolete syntax) and
    // even a fold there are read as mail clients read them: such a From: counts as one.
    const name = /^([!-9;-~]+)[ \t\r\n]*:/.exec(f.text);
    f.key = name ? asciiLower(name[1]!) : '';
  }
  return fields;
}

/**
 * The fields to sign, bottom-up as a verifier pairs h= names with instances (§5.4.2), and h=: those names,
 * then the over-signed ones once more (a name with no instance left stands for the null string, §5.4).
 */
function signedNames(fields: Field[]): { instances: string[]; all: string[] } {
  const picked = fields.filter((f) => SIGNED.includes(f.key)).reverse();
  const present = new Set(picked.map((f) => f.key));
  const extra = SIGNED.filter((k) => OVERSIGNED_ALWAYS.has(k) || (OVERSIGNED_PRESENT.has(k) && present.has(k)));
  return { instances: picked.map((f) => f.text), all: [...picked.map((f) => f.key), ...extra] };
}

/** RFC 6376 §3.4.2: name lowercased, unfolded, runs of WSP one space, none at the ends or around the colon. */
function relaxedField(text: string): string {
  const colon = text.indexOf(':');
  const name = asciiLower(text.slice(0, colon).replace(/[ \t\r\n]+$/, ''));
  const value = text.slice(colon + 1).replace(/\r\n/g, '').replace(/[ \t]+/g, ' ').replace(/^ | $/g, '');
  return `${name}:${value}`;
}

/** Lowercase A-Z only: an 8-bit byte (read as latin1) is not a letter to fold. */
const asciiLower = (s: string): string => s.replace(/[A-Z]+/g, (m) => m.toLowerCase());

/**
 * RFC 6376 §3.4.4 relaxed body hash (SHA-256, base64): WSP runs one space, none at line ends, empty lines at
 * the end dropped, a last line without CRLF given one. A piece per turn of the event loop, so a large message
 * or one very long line never holds the queue process's thread (its watchdog is 1 s).
 */
async function bodyHash(body: Buffer): Promise<string> {
  const hash = createHash('sha256');
  let pendingLineEnds = 0; // CRLFs held back: they are dropped if only empty lines follow
  let any = false;
  for (let at = 0; at < body.length;) {
    const end = pieceEnd(body, at + BODY_PIECE_BYTES);
    // Collapse first, then drop the single space left before a line end: both linear (a lookahead is not).
    let text = body.subarray(at, end).toString('latin1').replace(/[ \t]+/g, ' ').replace(/ \r\n/g, '\r\n');
    if (end === body.length) text = text.replace(/ $/, ''); // the last line, given its CRLF below
    let content = text.length;
    while (content >= 2 && text.charCodeAt(content - 1) === 0x0a && text.charCodeAt(content - 2) === 0x0d) content -= 2;
    if (content > 0) {
      if (pendingLineEnds) hash.update('\r\n'.repeat(pendingLineEnds), 'latin1');
      hash.update(text.slice(0, content), 'latin1');
      any = true;
      pendingLineEnds = (text.length - content) / 2;
    } else {
      pendingLineEnds += text.length / 2; // empty lines: kept if a line with content follows, at the start too
    }
    at = end;
    if (at < body.length) await nextTurn();
  }
  if (any) hash.update('\r\n', 'latin1');
  return hash.digest('base64');
}

/**
 * Where a piece of the body may end, at `from` or after: after a byte that is not SP, HTAB or CR, so that no run
 * of WSP and no CRLF is cut in two (the canonicalization of each piece is then that of the whole). Within a line
 * too: a line of megabytes is hashed a piece at a time like any other.
 */
function pieceEnd(body: Buffer, from: number): number {
  for (let at = from; at < body.length; at++) {
    const before = body[at - 1];
    if (before !== 0x20 && before !== 0x09 && before !== 0x0d) return at;
  }
  return body.length;
}

/** The h= tag's words: names joined by colons, each a place to fold at (FWS is allowed around them, §3.5). */
function hTag(names: string[]): string[] {
  return names.map((n, i) => (i === 0 ? 'h=' : '') + n + (i === names.length - 1 ? ';' : ':'));
}

/** Words after `start`, a space between tags, folded (CRLF + space) before a line passes 78 characters. */
function fold(start: string, words: string[]): string {
  let out = start;
  let line = start.length;
  let prev = '';
  for (const w of words) {
    const gap = prev === '' || prev.endsWith(';') ? ' ' : ''; // inside h= the names follow their colon directly
    if (line + gap.length + w.length > 78) {
      out += '\r\n ' + w;
      line = 1 + w.length;
    } else {
      out += gap + w;
      line += gap.length + w.length;
    }
    prev = w;
  }
  return out;
}

const lastLineLength = (s: string): number => s.length - (s.lastIndexOf('\n') + 1);

/** The b= value folded (CRLF + space) to keep lines under 78 characters; a verifier ignores that FWS (§3.5). */
function foldBase64(b64: string, used: number): string {
  let out = '';
  let room = Math.max(78 - used, 8);
  for (let at = 0; at < b64.length; room = 76) {
    if (at > 0) out += '\r\n ';
    out += b64.slice(at, at + room);
    at += room;
  }
  return out;
}
