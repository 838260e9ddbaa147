/**
 * Lines of a message within the SMTP limit on the way out (RFC 5321 §4.5.3.1.6: 1000 octets with the CRLF), as
 * Postfix's smtp_line_length_limit does: a longer line is broken by a line end followed by a space, so that in a
 * header the rest is a folded line of the same field, and in a MIME body no continuation can be taken for a
 * boundary or a header. Sent as they are, such lines are refused by next hops that hold to the limit (Exim will
 * not relay them, others refuse them after the dot), and a message Postern took in bounced there.
 *
 * A break goes before a space or tab of the line's second half when there is one (a fold that adds nothing), else
 * at the limit with a space added, never inside a UTF-8 character. Line ends are those the SMTP client sends
 * (CRLF, and a bare CR or LF, each of which it makes CRLF: dkim.ts withCrlf); lines within the limit are left as
 * they are, line ends included.
 */
const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const HT = 0x09;

/** `message` with every line at most `limit` octets (its line end not counted); the same buffer when none is longer. 0: no limit. */
export function withLinesWithin(message: Buffer, limit: number): Buffer {
  if (limit <= 0) return message;
  let long = longLine(message, limit, 0);
  if (long === null) return message;
  // Only the long lines are rewritten; the rest is copied as it is (its line ends too: the SMTP client makes them
  // CRLF). Into one buffer: a break adds at most 3 octets (CR LF SP) per half a line's room, so this bound holds.
  const out = new Output(copyBound(message, limit));
  let copied = 0;
  while (long !== null) {
    out.copy(message, copied, long.start);
    breakLine(message, long.start, long.end, limit, out);
    copied = long.end;
    long = longLine(message, limit, long.end);
  }
  out.copy(message, copied, message.length);
  return out.bytes();
}

/** The bytes withLinesWithin(message, limit) allocates for its copy: 0 when it returns the message as it is. */
export function linesWithinCopyBytes(message: Buffer, limit: number): number {
  return limit > 0 && longLine(message, limit, 0) !== null ? copyBound(message, limit) : 0;
}

function copyBound(message: Buffer, limit: number): number {
  return message.length + 3 * Math.ceil(message.length / ((limit - 1) >> 1)) + 3;
}

/** Bytes written one after the other into a buffer of a known upper bound. */
class Output {
  readonly #buf: Buffer;
  #at = 0;
  constructor(size: number) { this.#buf = Buffer.allocUnsafe(size); }
  copy(from: Buffer, start: number, end: number): void { this.#at += from.copy(this.#buf, this.#at, start, end); }
  byte(b: number): void { this.#buf[this.#at++] = b; }
  bytes(): Buffer { return this.#buf.subarray(0, this.#at); }
}

/**
 * The first line longer than `limit` from `from` on (a line ends at LF or at a bare CR; `from` is a line start or
 * a line end): where it starts and where its line end is; null when there is none. Short lines are stepped over a
 * window at a time (the last LF within `limit` octets, found natively), so a message of many short lines costs a
 * native search per ~`limit` octets, not one per line; bytes are looked at in JS only in a line that may be long,
 * and only up to its LF or the point it is known long: each byte once over all calls. Native searches that went
 * on past the line (for its LF, to the message's end; for the window's last LF, back to the message's start) did
 * so again for each long line: 10 MB of long lines cut by bare CRs held the queue process for seconds, past its
 * watchdog.
 */
function longLine(message: Buffer, limit: number, from: number): { start: number; end: number } | null {
  let start = from;
  while (message.length - start > limit) {
    // Within the window only: lastIndexOf from its end goes on back to the message's start when the window has no LF.
    const lf = message.subarray(start, start + limit + 1).lastIndexOf(LF);
    if (lf >= 0) { start += lf + 1; continue; }
    // No LF within limit + 1 octets: long, unless a bare CR cuts it, or a CR before its LF is all that is over.
    let lineStart = start;
    let i = start;
    for (; i < message.length; i++) {
      const b = message[i];
      if (b === LF) break;
      if (b === CR) lineStart = i + 1;
      else if (i - lineStart >= limit) return { start: lineStart, end: lineEnd(message, i) };
    }
    start = i + 1;
  }
  return null;
}

/** The first LF or CR at `from` or after (the end of the line `from` is in), or the message's length. */
function lineEnd(message: Buffer, from: number): number {
  for (let i = from; i < message.length; i++) {
    const b = message[i];
    if (b === LF || b === CR) return i;
  }
  return message.length;
}

/** message[start, end) (one line, no line end in it) into `out`, in lines of at most `limit` octets, each after the first starting with a space or tab. */
function breakLine(message: Buffer, start: number, end: number, limit: number, out: Output): void {
  let at = start;
  /** The output line being written gets a space in front (it continues a line cut where there was none). */
  let pad = false;
  while ((pad ? 1 : 0) + end - at > limit) {
    const room = pad ? limit - 1 : limit; // bytes of the line that fit on this output line
    if (pad) out.byte(SP);
    // Before a space or tab in the second half of the room: a fold that adds nothing (the next line starts with it).
    const wsp = lastSpace(message, at + 1 + (room >> 1), at + room + 1);
    const cut = wsp > at ? wsp : utf8Boundary(message, at + room, at);
    out.copy(message, at, cut);
    out.byte(CR);
    out.byte(LF);
    pad = wsp <= at;
    at = cut;
  }
  if (pad) out.byte(SP);
  out.copy(message, at, end);
}

/**
 * The last space or tab in line[from, to) that follows a byte that is none, or -1: the line cut there ends in
 * text, never in a run of blanks (a folded line of blanks only is one some readers take for the empty line).
 * One pass back over the range: searching it again for each blank of a run cost the range's square per cut (a
 * line of megabytes of spaces held the queue process for seconds).
 */
function lastSpace(line: Buffer, from: number, to: number): number {
  for (let i = to - 1; i >= from; i--) {
    const b = line[i];
    if (b !== SP && b !== HT) continue;
    const before = line[i - 1];
    if (before !== SP && before !== HT) return i;
  }
  return -1;
}

/** `cut`, moved back to the start of the UTF-8 character it falls in (never before `min + 1`). */
function utf8Boundary(line: Buffer, cut: number, min: number): number {
  let i = cut;
  for (let back = 0; back < 3 && i > min + 1 && (line[i]! & 0xc0) === 0x80; back++) i--;
  return (line[i]! & 0xc0) === 0x80 ? cut : i;
}
