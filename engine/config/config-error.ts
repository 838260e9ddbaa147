import { DRAWS_NOTHING } from '../text/draws-nothing.ts';

/** A configuration problem, located: file, line, column and key path. */
export interface ConfigProblem {
  file: string;
  line?: number;
  column?: number;
  /** Dotted key path, e.g. `listeners[0].tls.mode`. */
  path?: string;
  message: string;
}

export function formatProblem(p: ConfigProblem): string {
  const where = p.line ? `${p.file}:${p.line}:${p.column ?? 1}` : p.file;
  return `${where}: ${p.path ? p.path + ': ' : ''}${p.message}`;
}

/** Thrown by the loader; the message lists every problem, one per line. */
export class ConfigError extends Error {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    super(problems.map(formatProblem).join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export function keyPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else {
      const name = String(part);
      const shown = isPlainKey(name) ? name : quotedKey(name);
      out += out ? `.${shown}` : shown;
    }
  }
  return out;
}

/**
 * Characters of a key of the file that must not reach a terminal as they are: control characters (an escape
 * sequence clears the screen or retitles the window, a carriage return overwrites the line, a newline makes a line
 * of the file's choosing), format characters (a right-to-left override reverses what follows), line separators, and
 * the other characters that draw nothing (DRAWS_NOTHING, as logs escape them: a key `c<U+3164>eo` read as `ceo`).
 */
const ODD = String.raw`[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]|` + DRAWS_NOTHING;
const ODD_CHARACTER = new RegExp(ODD, 'u');
const ODD_OR_QUOTING = new RegExp(String.raw`["\\]|` + ODD, 'gu');
/** A key is shown up to this many characters: a key of a megabyte would otherwise be printed whole on its line. */
const SHOWN_KEY_CHARS = 100;

/** A key that can be shown as it is: short, and nothing in it a terminal would act on. */
export function isPlainKey(key: string): boolean {
  return key.length <= SHOWN_KEY_CHARS && !ODD_CHARACTER.test(key);
}

/** A key of the file in double quotes, its odd characters escaped, cut short (with its length) when long. */
export function quotedKey(key: string): string {
  const cut = key.length > SHOWN_KEY_CHARS;
  const head = cut ? Array.from(key.slice(0, SHOWN_KEY_CHARS)).join('') : key;
  const escaped = head.replace(ODD_OR_QUOTING, (c) =>
    ESCAPES[c] ?? unicodeEscape(c.codePointAt(0)!));
  return cut ? `"${escaped}…" (${key.length} characters)` : `"${escaped}"`;
}

/** `\\u200b`; past the Basic Multilingual Plane `\\u{e0100}` (four digits and a fifth would read as another character and a digit). */
function unicodeEscape(cp: number): string {
  return cp > 0xffff ? `\\u{${cp.toString(16)}}` : `\\u${cp.toString(16).padStart(4, '0')}`;
}

const ESCAPES: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t', '"': '\\"', '\\': '\\\\' };
