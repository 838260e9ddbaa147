/**
 * RFC 2047 encoded-words (`=?utf-8?q?ceo=40example.com?=`) decoded as a reader's mail client decodes them, for the
 * sender binding's look at display names (header-senders.ts): undecoded, a name that shows the reader an address
 * held none. Decoded leniently, as clients do: anywhere in the text (also in a quoted string or next to other
 * text, which RFC 2047 forbids but Outlook, Gmail and libmime decode), whitespace between two encoded-words
 * dropped (`=?utf-8?q?ceo?= =?utf-8?q?=40x.example?=` reads `ceo@x.example`), any charset TextDecoder knows, UTF-7
 * (Outlook's codepage 65000: `+AEA-` is `@`), and any other as Latin-1 (its ASCII bytes, an `@` among them, as
 * they are). A check that finds more addresses than a reader sees refuses more, never less.
 */

const WORD = String.raw`=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=`;
const ENCODED_WORD = new RegExp(WORD, 'g');
/** Whitespace with an encoded-word on each side (RFC 2047 §6.2: it is not shown). */
const BETWEEN_WORDS = new RegExp(String.raw`(?<=\?=)\s+(?=${WORD})`, 'g');

/** `text` with every encoded-word decoded; as it is when it holds none. */
export function decodeEncodedWords(text: string): string {
  if (!text.includes('=?')) return text;
  return text.replace(BETWEEN_WORDS, '').replace(ENCODED_WORD, (_word, charset: string, encoding: string, data: string) =>
    decodeText(charset, encoding.toUpperCase() === 'B' ? Buffer.from(data, 'base64') : qBytes(data)));
}

/** RFC 2047 §4.2 Q encoding: `_` a space, `=HH` a byte. */
function qBytes(data: string): Buffer {
  return Buffer.from(data.replace(/_/g, ' ').replace(/=([0-9A-Fa-f]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16))), 'latin1');
}

function decodeText(charset: string, bytes: Buffer): string {
  const label = charset.replace(/\*.*$/, '').toLowerCase(); // RFC 2231 language suffix: `utf-8*en`
  if (label === 'utf-7' || label === 'unicode-1-1-utf-7') return utf7(bytes.toString('latin1'));
  try {
    return new TextDecoder(label).decode(bytes);
  } catch {
    return bytes.toString('latin1');
  }
}

/** RFC 2152 UTF-7: `+<modified base64 of UTF-16BE>-`, `+-` a plus sign, all else as it is. */
function utf7(text: string): string {
  return text.replace(/\+([A-Za-z0-9+/]*)-?/g, (_m, b64: string) => {
    if (b64 === '') return '+';
    const units = Buffer.from(b64, 'base64');
    let out = '';
    for (let i = 0; i + 1 < units.length; i += 2) out += String.fromCharCode(units.readUInt16BE(i));
    return out;
  });
}
