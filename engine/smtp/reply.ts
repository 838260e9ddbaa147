/**
 * SmtpReply: one reply Postern decided, with everything the wire and the log need. Refusals (4xx/5xx)
 * are handed to smtp-server's callbacks as their error argument: smtp-server reads only `responseCode`
 * and `message` from it, and `message` is the text it sends, starting with the enhanced status code
 * (RFC 3463). Every SmtpReply is built from the catalogue (replies.ts) or the verdict table
 * (verdict-replies.ts); PosternConnection.send() is where it reaches the wire.
 *
 * Plain data, not an Error: a reply is built for every accepted message and for most refusals, and an
 * Error's construction (its stack machinery) was most of the ~1.5 µs a reply cost per message in the
 * profile. A refusal thrown (message-intake.ts) is caught as an SmtpReply (instanceof) and never escapes.
 */
export class SmtpReply {
  readonly responseCode: number;
  readonly enhanced: string;
  readonly text: string;
  /** What smtp-server sends after the code: `<enhanced> <text>`. */
  readonly message: string;
  /** Close the connection after sending (421 always does). */
  readonly disconnect: boolean;
  /** Why: the rule, limit or script that decided (for the log line, never sent to the client). */
  readonly reason: string | undefined;

  constructor(code: number, enhanced: string, text: string, options: { disconnect?: boolean; reason?: string } = {}) {
    const clean = sanitizeReplyText(text);
    this.responseCode = code;
    this.enhanced = enhanced;
    this.text = clean;
    this.message = `${enhanced} ${clean}`;
    this.disconnect = (options.disconnect ?? false) || code === 421;
    this.reason = options.reason;
  }

  /** A 4xx or 5xx: smtp-server gets it as the callback's error. */
  get refuses(): boolean { return this.responseCode >= 400; }

  /** As an Error's would read, for a log line that prints one. */
  get name(): string { return 'SmtpReply'; }
  toString(): string { return `SmtpReply: ${this.message}`; }
}

// C0, DEL, C1 (NEL among them) and U+2028/U+2029: line breaks or controls to some reader of the reply or its log.
// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTER = /[\x00-\x1f\x7f-\x9f\u2028\u2029]/;
// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTERS = /[\x00-\x1f\x7f-\x9f\u2028\u2029]+/g;

/**
 * Most bytes of a reply's text. RFC 5321 §4.5.3.1.5 allows a reply line 512 octets with its code and CRLF; with
 * the longest code and enhanced code (`550 5.999.999 `) this leaves room to spare. Counted in UTF-8 bytes, as
 * the line goes out: a script's text built from a client's non-ASCII HELO name or address, cut at 400
 * characters, made lines of 1210 bytes.
 */
export const MAX_REPLY_TEXT_BYTES = 400;

/** Reply text must never contain a line break or control character (response splitting), nor be too long for one line. */
export function sanitizeReplyText(text: string): string {
  return clipUtf8(withoutControls(text), MAX_REPLY_TEXT_BYTES);
}

/** `text` cut to at most `maxBytes` bytes of UTF-8, at a character's end (a surrogate pair is never split). */
export function clipUtf8(text: string, maxBytes: number): string {
  // A UTF-16 unit is at most 3 bytes of UTF-8 (a pair, two units, is 4): short texts need no count.
  if (text.length * 3 <= maxBytes) return text;
  let bytes = 0;
  let end = 0;
  while (end < text.length) {
    const unit = text.charCodeAt(end);
    const pair = unit >= 0xd800 && unit <= 0xdbff && end + 1 < text.length &&
      text.charCodeAt(end + 1) >= 0xdc00 && text.charCodeAt(end + 1) <= 0xdfff;
    const size = pair ? 4 : unit < 0x80 ? 1 : unit < 0x800 ? 2 : 3; // a lone surrogate goes out as U+FFFD: 3
    if (bytes + size > maxBytes) break;
    bytes += size;
    end += pair ? 2 : 1;
  }
  return end === text.length ? text : text.slice(0, end);
}

/** `text` with each run of control characters (C0, DEL, C1, U+2028/U+2029) as one space. */
export function withoutControls(text: string): string {
  // Most texts are clean: checked first, they are returned as they are (no copy).
  return CONTROL_CHARACTER.test(text) ? text.replace(CONTROL_CHARACTERS, ' ') : text;
}

// eslint-disable-next-line no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;
// eslint-disable-next-line no-control-regex
const NON_ASCII_CHARACTERS = /[^\x00-\x7f]/gu;

/**
 * `text` in 7 bits, each non-ASCII character as "?" (as Postfix's printable() writes it): the reply text for a
 * client that did not declare SMTPUTF8, to which replies must be ASCII (RFC 5321 §2.4, RFC 6531 §3.7.4.2).
 */
export function asciiReplyText(text: string): string {
  return NON_ASCII.test(text) ? text.replace(NON_ASCII_CHARACTERS, '?') : text;
}

/** A reply line's text already carries an enhanced status code. */
export const ENHANCED_CODE_PREFIX = /^[245]\.\d{1,3}\.\d{1,3}( |$)/;
