/**
 * The files a build reads (tables, the users file) are parsed on the event loop that serves mail, at a reload too,
 * and a large one is seconds of work: done in one go it held every session of the process, and past a second the
 * worker's watchdog took it for a hung script and killed it, each worker at once, with every connection. A parse
 * gives way this often.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';

export const PARSE_SLICE_MS = 20;

/**
 * Call once per entry: resolves at once, or after the event loop had its turn when the slice is used up. The clock
 * is looked at every `checkEvery` entries: lines are cheap, but a certificate is a millisecond to parse.
 */
export function slicer(checkEvery = 256): () => Promise<void> | undefined {
  let since = performance.now();
  let n = 0;
  return () => {
    if (++n % checkEvery !== 0 || performance.now() - since < PARSE_SLICE_MS) return undefined;
    return yieldToEventLoop().then(() => { since = performance.now(); });
  };
}

/**
 * `text`'s lines (without `\r\n` or `\n`) with their numbers, one at a time: one split() of a large file is itself a
 * long stretch. A byte-order mark before the first line (Notepad's "UTF-8 with BOM") is not part of it: an editor
 * shows none, and a table's first line that began with it was refused as a continuation line (JavaScript's \s
 * matches U+FEFF), naming nothing the operator could see.
 */
export function* linesOf(text: string): Generator<[line: string, number: number]> {
  for (let i = 1, start = text.startsWith('\uFEFF') ? 1 : 0; start <= text.length; i++) {
    const newline = text.indexOf('\n', start);
    const end = newline < 0 ? text.length : newline;
    yield [text.slice(start, end > start && text[end - 1] === '\r' ? end - 1 : end), i];
    start = end + 1;
  }
}
