/**
 * Key/value tables named in the configuration (`tables:`), loaded from files for scripts' lookup() and
 * for pin tables. Fingerprint-shaped keys are indexed in canonical hex too, so colon-hex, plain hex and
 * base64 forms of the same digest all find the entry.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { readInputFile, readProblem } from '../config/input-file.ts';
import { LineCounter, isAlias, isMap, isNode, isScalar, parseDocument } from 'yaml';
import type { Config, TableConfig } from '../config/schema.ts';
import { normalizeFingerprint } from '../certificates/index.ts';
import { containsPrivateKey, hideKeyMaterial, privateKeyFileMessage, quoteLine, quoteToken } from '../certificates/key-material.ts';

export class TableError extends Error {
  readonly file: string;
  readonly line: number | undefined;
  constructor(file: string, line: number | undefined, message: string) {
    super(`${file}${line ? `:${line}` : ''}: ${message}`);
    this.file = file;
    this.line = line;
    this.name = 'TableError';
  }
}

export class LookupTable {
  readonly #entries = new Map<string, string>();
  readonly #caseSensitive: boolean;
  readonly name: string;
  readonly file: string;
  constructor(name: string, file: string, caseSensitive: boolean) {
    this.name = name;
    this.file = file;
    this.#caseSensitive = caseSensitive;
  }

  /** False when the key was there already, in this spelling or (a digest) in another: hex, colon hex, base64. */
  set(key: string, value: string): boolean {
    const k = this.#fold(key);
    const canonical = normalizeFingerprint(key);
    // One pin written twice, in two spellings, for two accounts: the later line silently won.
    const had = this.#entries.has(k) || (canonical !== null && this.#entries.has(canonical.hex));
    this.#entries.set(k, value);
    if (canonical && canonical.hex !== k) this.#entries.set(canonical.hex, value);
    return !had;
  }

  get(key: string): string | null {
    const hit = this.#entries.get(this.#fold(key));
    if (hit !== undefined) return hit;
    const canonical = normalizeFingerprint(key);
    return canonical ? this.#entries.get(canonical.hex) ?? null : null;
  }

  get size(): number { return this.#entries.size; }

  #fold(key: string): string { return this.#caseSensitive ? key : key.toLowerCase(); }
}

export async function loadTable(name: string, spec: TableConfig): Promise<LookupTable> {
  const { file, format, caseSensitive } = typeof spec === 'string'
    ? { file: spec, format: 'postfix' as const, caseSensitive: false } : spec;
  let text: string;
  try {
    text = (await readInputFile(file)).toString('utf8');
  } catch (err) {
    throw new TableError(file, undefined, `table "${name}": cannot read: ${readProblem(err)}`);
  }
  // Errors quote table lines: a private key named here by mistake must not reach the terminal or the log.
  if (containsPrivateKey(text)) throw new TableError(file, undefined, `table "${name}": ${privateKeyFileMessage('a table')}`);
  const table = new LookupTable(name, file, caseSensitive);
  if (format === 'postfix') await parsePostfix(table, text, file);
  else await parseMapping(table, text, file, format);
  return table;
}

/**
 * Tables are read on the event loop that serves mail, at a reload too, and a large one is seconds of work (some
 * 150,000 lines a second): done in one go it held every session of the process, and past a second the worker's
 * watchdog took it for a hung script and killed it, each worker at once, with every connection. The parse gives
 * way this often.
 */
const PARSE_SLICE_MS = 20;

/** Call once per entry: resolves at once, or after the event loop had its turn when the slice is used up. */
function slicer(): () => Promise<void> | undefined {
  let since = performance.now();
  let n = 0;
  return () => {
    if ((++n & 255) !== 0 || performance.now() - since < PARSE_SLICE_MS) return undefined;
    return yieldToEventLoop().then(() => { since = performance.now(); });
  };
}

/** Postfix-style: `key  value` per line, `#` comments. (Continuation lines are not supported: an error.) */
async function parsePostfix(table: LookupTable, text: string, file: string): Promise<void> {
  const giveWay = slicer();
  // Line by line rather than split(): one split of a large file is itself a long stretch without a turn.
  for (let i = 0, start = 0; start <= text.length; i++) {
    const newline = text.indexOf('\n', start);
    const end = newline < 0 ? text.length : newline;
    const raw = text.slice(start, end > start && text[end - 1] === '\r' ? end - 1 : end);
    start = end + 1;
    const turn = giveWay();
    if (turn) await turn;
    if (/^\s*(#|$)/.test(raw)) continue;
    if (/^\s/.test(raw)) throw new TableError(file, i + 1, 'line starts with whitespace but there is no entry to continue');
    const m = /^(\S+)\s+(.*\S)\s*$/.exec(raw);
    if (!m) throw new TableError(file, i + 1, `expected "key value", got ${quoteLine(raw)}`);
    if (!table.set(m[1]!, m[2]!)) throw new TableError(file, i + 1, `duplicate key ${quoteToken(m[1]!)}`);
  }
}

async function parseMapping(table: LookupTable, text: string, file: string, format: 'yaml' | 'json'): Promise<void> {
  const entries = format === 'json' ? jsonEntries(text, file) : yamlEntries(text, file);
  const giveWay = slicer();
  for (const [k, v, line] of entries) {
    const turn = giveWay();
    if (turn) await turn;
    if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') throw new TableError(file, line, `value of ${quoteToken(k)} must be a scalar`);
    // The same key twice, or in two spellings (a pin as hex and as base64url, or in two cases): one would be lost.
    if (!table.set(k, String(v))) throw new TableError(file, line ?? lineOfKey(text, k), `duplicate key ${quoteToken(k)}`);
  }
}

type Entry = [key: string, value: unknown, line?: number];

function jsonEntries(text: string, file: string): Entry[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    const jsonLine = /\(line (\d+) column \d+\)/.exec((err as Error).message)?.[1];
    throw new TableError(file, jsonLine ? Number(jsonLine) : undefined, parseErrorText((err as Error).message, 'json'));
  }
  if (!data || typeof data !== 'object' || Array.isArray(data)) throw new TableError(file, undefined, 'expected a mapping of keys to values');
  return Object.entries(data);
}

/**
 * A YAML mapping's entries with their lines. The yaml package's own check for keys given twice compares each key
 * with every one before it: a table of 10,000 entries took 7 s, 100,000 some minutes, all of it on the event loop
 * (every worker killed as hung at a reload). Keys given twice are found by the table itself instead (set()).
 */
function yamlEntries(text: string, file: string): Entry[] {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { uniqueKeys: false, lineCounter });
  const error = doc.errors[0];
  if (error) throw new TableError(file, error.linePos?.[0]?.line, parseErrorText(error.message, 'yaml'));
  if (doc.contents === null) throw new TableError(file, undefined, 'expected a mapping of keys to values');
  if (!isMap(doc.contents)) throw new TableError(file, lineCounter.linePos(doc.contents.range?.[0] ?? 0).line, 'expected a mapping of keys to values');
  return doc.contents.items.map((pair): Entry => {
    const key = isAlias(pair.key) ? pair.key.resolve(doc) : pair.key;
    const value = isAlias(pair.value) ? pair.value.resolve(doc) : pair.value;
    const line = isNode(pair.key) && pair.key.range ? lineCounter.linePos(pair.key.range[0]).line : undefined;
    return [String(isScalar(key) ? key.value : key), isScalar(value) ? value.value : value, line];
  });
}

/** The first line whose entry starts with `key` (quoted or not), for a problem found after the parse. */
function lineOfKey(text: string, key: string): number | undefined {
  const i = text.split(/\r?\n/).findIndex((line) => line.trimStart().replace(/^[{,]\s*/, '').replace(/^["']/, '').startsWith(key));
  return i < 0 ? undefined : i + 1;
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

export async function loadTables(config: Config): Promise<Map<string, LookupTable>> {
  const entries = await Promise.all(Object.entries(config.tables).map(async ([name, spec]) => [name, await loadTable(name, spec)] as const));
  return new Map(entries);
}
