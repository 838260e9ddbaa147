/**
 * The server's one pino logger: JSON lines with ISO-8601 times (for log shippers and people alike), or
 * `log.format: pretty` for a terminal. Components take children with `{ component }` bindings.
 * pino-pretty is loaded only for `pretty`, and synchronously (createLogger is called before anything
 * async, e.g. by the supervisor and `postern check`), hence require rather than import().
 */
import { pino, type Logger } from 'pino';
import { createRequire } from 'node:module';
import type PinoPretty from 'pino-pretty';
import { turnBufferedStdout } from './turn-buffered-stdout.ts';
import { wholeLines } from './whole-lines.ts';
import { DRAWS_NOTHING } from '../text/draws-nothing.ts';

export type { Logger } from 'pino';

export type LogFormat = 'json' | 'pretty';

export function createLogger(level: string, destination?: NodeJS.WritableStream, format: LogFormat = 'json'): Logger {
  const options = { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  if (format === 'pretty') {
    const pretty = createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty;
    return pino(options, pretty({ destination: destination ?? 1, colorize: !destination && process.stdout.isTTY, sync: true }));
  }
  // On stdout (shared by the processes of postern serve) no line may be longer than one atomic pipe write.
  if (!destination) return pino({ ...options, hooks: { streamWrite: wholeLines } }, turnBufferedStdout());
  return pino(options, destination);
}

/**
 * A value a client chose (an AUTH username, an EXTERNAL authzid, a sign-in name) as a log field: at most `max`
 * characters, then "...". Logged at each failure, a name the size of a command line (12 KB; 64 KiB in a form)
 * made every failed attempt that much log. And what a reader's terminal would act on or show as something else
 * is written as `\u{…}`: JSON escapes C0 controls, not C1 ones (U+009B is a terminal's CSI), bidi overrides
 * (`\u202E` shows "evil" as "live"), zero-width characters or line separators, nor the other characters that
 * draw nothing (DRAWS_NOTHING: a HELO name `c\u3164eo.example` read as ceo.example).
 */
const UNSHOWABLE = new RegExp(String.raw`[\p{Cc}\p{Cf}\p{Cs}\u2028\u2029]|` + DRAWS_NOTHING, 'gu');
export function clientText(value: string, max = 256): string {
  const cut = value.length <= max ? value : `${value.slice(0, max)}...`;
  return cut.replace(UNSHOWABLE, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
}

/**
 * Text a script wrote (its log() lines, the message of an error it threw), which may carry what a client sent
 * (a header, an address): what a reader's terminal would act on or show as something else is written as
 * `\u{…}`, as clientText() does, not cut (log() has its own limit); C0 controls are left to JSON's own
 * escapes (`\n`). The line is scanned once, and replaced only when it has such a character.
 */
const UNSHOWABLE_IN_JSON = new RegExp(String.raw`[\u0080-\u009f\p{Cf}\p{Cs}\u2028\u2029]|` + DRAWS_NOTHING, 'u');
const UNSHOWABLE_IN_JSON_ALL = new RegExp(UNSHOWABLE_IN_JSON.source, 'gu');
export function scriptText(value: string): string {
  return UNSHOWABLE_IN_JSON.test(value) ? value.replace(UNSHOWABLE_IN_JSON_ALL, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`) : value;
}

/**
 * scriptText(value) cut so that a JSON line holds at most `max` characters of it, escapes included, and says how much
 * was cut: what a script threw is logged for every failed call (engine/policy/run-hook.ts), and cut to 8192 characters
 * as thrown, a text of zero-width spaces still wrote nine times that.
 */
export function scriptTextWithin(value: string, max: number): string {
  const text = scriptText(value); // holds nothing scriptText would escape again
  if (writtenLength(text) <= max) return text;
  const room = max - 40; // for the note
  let lo = 0;
  let hi = Math.min(text.length, room);
  while (lo < hi) { // the longest prefix that fits
    const mid = Math.ceil((lo + hi) / 2);
    if (JSON.stringify(text.slice(0, mid)).length - 2 <= room) lo = mid;
    else hi = mid - 1;
  }
  if (lo > 0 && (text.charCodeAt(lo - 1) & 0xfc00) === 0xd800) lo--; // not half a pair
  return `${text.slice(0, lo)}… (${text.length - lo} more characters)`;
}

const ESCAPED_IN_JSON_LINE = new RegExp(String.raw`[\u0000-\u001f"\\\u0080-\u009f\p{Cf}\p{Cs}\u2028\u2029]|` + DRAWS_NOTHING, 'u');
/**
 * How many characters scriptText(value) takes in a JSON log line: C0 controls, `"` and `\` are escaped by JSON, and
 * scriptText's `\u{…}` has its backslash escaped again, so one character a script logged can be nine in the log.
 * What scripts may log a second is counted in these (engine/sandbox/log-budget.ts), or a line of zero-width spaces
 * wrote nine times the budget. A line with none of them (most) is measured without being copied.
 */
export function writtenLength(value: string): number {
  return ESCAPED_IN_JSON_LINE.test(value) ? JSON.stringify(scriptText(value)).length - 2 : value.length;
}
