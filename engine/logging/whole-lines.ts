/**
 * JSON log lines no longer than one atomic pipe write. The processes of `postern serve` share the supervisor's
 * stdout, and only a write of at most PIPE_BUF (4096) bytes to a pipe is never cut by another process's write
 * (engine/logging/turn-buffered-stdout.ts writes whole lines up to that). A longer line — a script's log() line
 * (8192 characters, each up to nine as written: `\\u{200b}`), a script failure (its text twice) — was written in
 * pieces once the reader fell behind, and another worker's lines landed inside it: a quarter of such lines
 * came out as broken JSON that log shippers and fail2ban drop.
 *
 * So a longer line is written as several whole lines, each with `part: "i/n"` and one piece of one long field. The
 * first has every short field of the line; the later ones only those that say whose line it is (JOINING), so that a
 * tool counting lines by what they say (a refusal's `decision`, fail2ban's pattern) counts the line once, not once
 * per part. Concatenating a field's pieces in part order gives its value back (a long field that is not a string is
 * split as its JSON text).
 */

/** The fields a later part repeats: enough to join it to its first part (same process, same connection or message). */
const JOINING = ['level', 'time', 'pid', 'hostname', 'component', 'cid', 'id'] as const;

/** Bytes of one line, its newline included, at most (PIPE_BUF). */
export const MAX_LINE_BYTES = 4096;
/** Room kept in each part line for `"part":"i/n"` and the long field's key and quotes. */
const PART_OVERHEAD = 96;

const bytesOf = (s: string): number => Buffer.byteLength(s);

/** `line` (one serialized JSON object and its newline) as lines of at most MAX_LINE_BYTES bytes. */
export function wholeLines(line: string): string {
  if (line.length < MAX_LINE_BYTES / 3 || bytesOf(line) <= MAX_LINE_BYTES) return line;
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line; // not JSON (pretty): nothing to split by
  }
  // The largest fields leave the shared part until what every part repeats takes at most half a line.
  const short = { ...record };
  const long: Array<[string, string]> = [];
  const sizes = Object.entries(record).map(([key, value]) => [key, bytesOf(JSON.stringify(value) ?? '')] as const).sort((a, b) => b[1] - a[1]);
  for (const [key] of sizes) {
    if (bytesOf(JSON.stringify(short)) + PART_OVERHEAD <= MAX_LINE_BYTES / 2) break;
    const value = record[key];
    long.push([key, typeof value === 'string' ? value : JSON.stringify(value)]);
    delete short[key];
  }
  const shared = bytesOf(JSON.stringify(short));
  const pieces: Array<[string, string]> = [];
  for (const [key, value] of long) {
    const room = MAX_LINE_BYTES - 1 - shared - PART_OVERHEAD - bytesOf(JSON.stringify(key));
    for (const piece of split(value, room)) pieces.push([key, piece]);
  }
  const joining: Record<string, unknown> = {};
  for (const key of JOINING) if (key in short) joining[key] = short[key];
  return pieces.map(([key, piece], i) => `${JSON.stringify({ ...(i === 0 ? short : joining), part: `${i + 1}/${pieces.length}`, [key]: piece })}\n`).join('');
}

/** `value` in pieces whose JSON text (escapes included, UTF-8) is at most `room` bytes each; no character is cut. */
function split(value: string, room: number): string[] {
  const pieces: string[] = [];
  let start = 0;
  let used = 0;
  for (let i = 0; i < value.length;) {
    const unit = value.charCodeAt(i);
    const pair = unit >= 0xd800 && unit <= 0xdbff && i + 1 < value.length && (value.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
    const cost = pair ? 4 : jsonBytes(unit);
    if (used + cost > room && i > start) {
      pieces.push(value.slice(start, i));
      start = i;
      used = 0;
    }
    used += cost;
    i += pair ? 2 : 1;
  }
  pieces.push(value.slice(start));
  return pieces;
}

/** Bytes of one UTF-16 unit (not half of a pair) in JSON.stringify's text, UTF-8: a split costs no string per character. */
function jsonBytes(unit: number): number {
  if (unit < 0x20) return unit === 8 || unit === 9 || unit === 10 || unit === 12 || unit === 13 ? 2 : 6; // \n, \u0001
  if (unit === 0x22 || unit === 0x5c) return 2; // \" \\
  if (unit < 0x80) return 1;
  if (unit < 0x800) return 2;
  if (unit >= 0xd800 && unit <= 0xdfff) return 6; // a lone surrogate: \ud800
  return 3;
}
