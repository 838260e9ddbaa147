/**
 * Minimal DER primitives (TLV walking, OIDs, INTEGERs, times, strings) for reading certificates
 * without a schema library: x509-fields.ts builds on these.
 */

export interface Tlv {
  tag: number;
  /** Offset of the tag byte. */
  start: number;
  /** Offset of the first content byte. */
  body: number;
  /** Offset after the last content byte. */
  end: number;
}

export function malformed(): never {
  throw new Error('malformed DER certificate');
}

export function readTlv(buf: Buffer, pos: number, limit: number): Tlv {
  if (pos + 2 > limit) malformed();
  const tag = buf[pos]!;
  if ((tag & 0x1f) === 0x1f) malformed(); // high tag numbers never occur in X.509
  let length = buf[pos + 1]!;
  let body = pos + 2;
  if (length & 0x80) {
    const n = length & 0x7f;
    if (n === 0 || n > 4 || body + n > limit) malformed();
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + buf[body++]!;
  }
  const end = body + length;
  if (end > limit) malformed();
  return { tag, start: pos, body, end };
}

/** The elements of a constructed value (SEQUENCE, SET, explicit tag, or an OCTET STRING wrapping DER). */
export function children(buf: Buffer, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let pos = parent.body; pos < parent.end; pos = out[out.length - 1]!.end) out.push(readTlv(buf, pos, parent.end));
  return out;
}

export function oid(buf: Buffer, t: Tlv): string {
  const arcs: number[] = [];
  let value = 0;
  for (let i = t.body; i < t.end; i++) {
    value = value * 128 + (buf[i]! & 0x7f);
    if (buf[i]! & 0x80) continue;
    if (arcs.length === 0) arcs.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
    else arcs.push(value);
    value = 0;
  }
  return arcs.join('.');
}

/** A positive INTEGER's magnitude: the content without DER's leading 0x00 sign byte. */
export function unsignedBytes(buf: Buffer, t: Tlv): Buffer {
  const start = t.end - t.body > 1 && buf[t.body] === 0 ? t.body + 1 : t.body;
  return buf.subarray(start, t.end);
}

/** UTCTime (two-digit year: 50–99 → 19xx, RFC 5280 §4.1.2.5.1) or GeneralizedTime, in UTC. */
export function time(buf: Buffer, t: Tlv): Date {
  if (t.tag !== 0x17 && t.tag !== 0x18) malformed();
  const text = buf.toString('latin1', t.body, t.end);
  const m = (t.tag === 0x17 ? UTC_TIME : GENERALIZED_TIME).exec(text) ?? malformed();
  const [, y, mo, d, h, mi, s = '0', frac = '0'] = m;
  const year = t.tag === 0x17 ? (Number(y) < 50 ? 2000 : 1900) + Number(y) : Number(y);
  return new Date(Date.UTC(year, Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), Number(`0.${frac}`) * 1000));
}

const UTC_TIME = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?Z$/;
const GENERALIZED_TIME = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?(?:\.(\d+))?Z$/;

/** The directory string types as text; undefined for any other type. */
export function directoryString(buf: Buffer, t: Tlv): string | undefined {
  switch (t.tag) {
    case 0x0c: return buf.toString('utf8', t.body, t.end); // UTF8String
    case 0x12: case 0x13: case 0x14: case 0x16: case 0x1a: // Numeric, Printable, T61 (as latin1, like OpenSSL), IA5, Visible
      return buf.toString('latin1', t.body, t.end);
    case 0x1e: // BMPString: UTF-16BE
      if ((t.end - t.body) % 2) malformed();
      return Buffer.from(buf.subarray(t.body, t.end)).swap16().toString('utf16le');
    case 0x1c: { // UniversalString: UTF-32BE
      let s = '';
      for (let i = t.body; i + 4 <= t.end; i += 4) s += String.fromCodePoint(Math.min(buf.readUInt32BE(i), 0x10ffff));
      return s;
    }
    default: return undefined;
  }
}
