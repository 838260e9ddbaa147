/**
 * A YAML or JSON table's entries with their lines, as plain data: what mapping-parse-thread.ts sends back from
 * its thread (lookup-tables.ts). Nothing here may need the main thread.
 */
import { LineCounter, isAlias, isMap, isNode, isScalar, parseDocument } from 'yaml';
import { hideKeyMaterial, quoteToken } from '../certificates/key-material.ts';

/** A value that is no string, number or boolean (a list, a mapping, null) is sent as null: refused as not a scalar. */
export type Entry = [key: string, value: string | number | boolean | null, line?: number];

/** A problem with the file as a whole, at `line` when one is known; the caller names the file. */
export class MappingError extends Error {
  readonly line: number | undefined;
  constructor(line: number | undefined, message: string) {
    super(message);
    this.line = line;
    this.name = 'MappingError';
  }
}

export function mappingEntries(text: string, format: 'yaml' | 'json'): Entry[] {
  return format === 'json' ? jsonEntries(text) : yamlEntries(text);
}

function scalar(value: unknown): Entry[1] {
  return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' ? value : null;
}

function jsonEntries(text: string): Entry[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    const jsonLine = /\(line (\d+) column \d+\)/.exec((err as Error).message)?.[1];
    throw new MappingError(jsonLine ? Number(jsonLine) : undefined, parseErrorText((err as Error).message, 'json'));
  }
  if (!data || typeof data !== 'object' || Array.isArray(data)) throw new MappingError(undefined, 'expected a mapping of keys to values');
  refuseRepeatedKeys(text, Object.keys(data).length);
  return Object.entries(data).map(([k, v]): Entry => [k, scalar(v)]);
}

/**
 * JSON.parse keeps the last of a key given twice, silently (YAML and Postfix tables refuse it, naming the line).
 * The top-level keys of the text, already known to be valid JSON, are counted in one pass: as many as the object
 * has, none was given twice; else the first repeated one is named with its line. The yaml package reads JSON and
 * tells the lines too, but took 1.3 s for 100,000 entries where JSON.parse and this count take some 50 ms.
 */
function refuseRepeatedKeys(text: string, distinct: number): void {
  const spans = topLevelKeySpans(text);
  if (spans.length / 2 === distinct) return;
  const seen = new Set<string>();
  for (let i = 0; i < spans.length; i += 2) {
    const key = JSON.parse(text.slice(spans[i], spans[i + 1])) as string;
    if (seen.has(key)) throw new MappingError(lineAt(text, spans[i]!), `duplicate key ${quoteToken(key)}`);
    seen.add(key);
  }
}

/** Start and end (after the closing quote) of each key of the outermost object, in pairs; `text` is valid JSON. */
function topLevelKeySpans(text: string): number[] {
  const spans: number[] = [];
  let depth = 0;
  let keyNext = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) { // "
      const start = i;
      for (;;) {
        i = text.indexOf('"', i + 1);
        let backslashes = 0;
        while (text.charCodeAt(i - 1 - backslashes) === 0x5c) backslashes++;
        if (backslashes % 2 === 0) break;
      }
      if (keyNext) spans.push(start, i + 1);
      keyNext = false;
    } else if (c === 0x7b || c === 0x5b) { // { [
      keyNext = ++depth === 1 && c === 0x7b;
    } else if (c === 0x7d || c === 0x5d) { // } ]
      depth--;
    } else if (c === 0x2c && depth === 1) { // ,
      keyNext = true;
    }
  }
  return spans;
}

function lineAt(text: string, offset: number): number {
  let line = 1;
  for (let i = text.indexOf('\n'); i >= 0 && i < offset; i = text.indexOf('\n', i + 1)) line++;
  return line;
}

/**
 * A YAML mapping's entries with their lines. The yaml package's own check for keys given twice compares each key
 * with every one before it: a table of 10,000 entries took 7 s, 100,000 some minutes. Keys given twice are found
 * by the table itself instead (LookupTable.set()).
 */
function yamlEntries(text: string): Entry[] {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { uniqueKeys: false, lineCounter });
  const error = doc.errors[0];
  if (error) throw new MappingError(error.linePos?.[0]?.line, parseErrorText(error.message, 'yaml'));
  if (doc.contents === null) throw new MappingError(undefined, 'expected a mapping of keys to values');
  if (!isMap(doc.contents)) throw new MappingError(lineCounter.linePos(doc.contents.range?.[0] ?? 0).line, 'expected a mapping of keys to values');
  return doc.contents.items.map((pair): Entry => {
    const key = isAlias(pair.key) ? pair.key.resolve(doc) : pair.key;
    const value = isAlias(pair.value) ? pair.value.resolve(doc) : pair.value;
    const line = isNode(pair.key) && pair.key.range ? lineCounter.linePos(pair.key.range[0]).line : undefined;
    return [String(isScalar(key) ? key.value : key), scalar(isScalar(value) ? value.value : value), line];
  });
}

/**
 * A parser's message without the file content it quotes: V8's JSON errors carry an excerpt of the input
 * (`Unexpected token 'M', "MIIEvQIBAD"... is not valid JSON`), yaml's first line may carry a token.
 */
function parseErrorText(message: string, format: 'yaml' | 'json'): string {
  const first = message.split('\n')[0]!;
  if (format === 'yaml') return hideKeyMaterial(first);
  return `not valid JSON: ${first.replace(/^Unexpected token .*? is not valid JSON$/, 'unexpected token')
    .replace(/ at position \d+ \(line \d+ column \d+\)$/, '').replace(/"[^"]*"(\.\.\.)?/g, '…')}`;
}
