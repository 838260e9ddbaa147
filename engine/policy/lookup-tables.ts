/**
 * Key/value tables named in the configuration (`tables:`), loaded from files for scripts' lookup() and
 * for pin tables. Fingerprint-shaped keys are indexed in canonical hex too, so colon-hex, plain hex and
 * base64 forms of the same digest all find the entry; IP address keys in the one spelling of canonicalIp; domain
 * and address keys with an IDN by their A-labels (U-label and A-label spellings find each other).
 */
import { readInputFile, readProblem } from '../config/input-file.ts';
import { linesOf, slicer } from '../config/give-way.ts';
import type { Worker } from 'node:worker_threads';
import { typescriptWorker } from '../cluster/typescript-children.ts';
import type { Entry } from './mapping-entries.ts';
import type { MappingReply } from './mapping-parse-thread.ts';
import type { Config, TableConfig } from '../config/schema.ts';
import { normalizeFingerprint } from '../certificates/index.ts';
import { canonicalIp } from '../addresses/ip-text.ts';
import { domainKey } from './domain-key.ts';
import { containsPrivateKey, privateKeyFileMessage, quoteLine, quoteToken } from '../certificates/key-material.ts';

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
  /** Keys (folded) written in another spelling than their canonical one, which is a key too. */
  readonly #spellings = new Set<string>();
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
    const canonical = this.#canonical(key);
    // One pin (or address) written twice, in two spellings, for two accounts: the later line silently won.
    const had = this.#entries.has(k) || (canonical !== null && this.#entries.has(canonical));
    this.#entries.set(k, value);
    if (canonical && canonical !== k) {
      this.#entries.set(canonical, value);
      this.#spellings.add(k);
    }
    return !had;
  }

  get(key: string): string | null {
    const hit = this.#entries.get(this.#fold(key));
    if (hit !== undefined) return hit;
    const canonical = this.#canonical(key);
    return canonical ? this.#entries.get(canonical) ?? null : null;
  }

  /**
   * Is `key` (one of keys()) a spelling of another key of the table, its canonical one (see #canonical)? A
   * case-folded base64 pin is one, though it no longer reads as a digest itself.
   */
  isSpelling(key: string): boolean { return this.#spellings.has(key); }

  /** The key's one spelling when it is a digest, an IP address, or a domain or address with an IDN (else null). */
  #canonical(key: string): string | null {
    const name = normalizeFingerprint(key)?.hex ?? ipKey(key) ?? nameKey(key);
    return name === null ? null : this.#fold(name);
  }

  get size(): number { return this.#entries.size; }

  /** The keys as indexed (a digest also in its canonical hex). */
  keys(): IterableIterator<string> { return this.#entries.keys(); }

  #fold(key: string): string { return this.#caseSensitive ? key : key.toLowerCase(); }
}

/**
 * An address key in the spelling clients are named in (canonicalIp): `2001:DB8:0:0::1` or `::ffff:192.0.2.1`
 * in a table matched no client, whose address scripts have as `2001:db8::1` or `192.0.2.1`. Null: not an
 * address, or already in that spelling.
 */
function ipKey(key: string): string | null {
  const canonical = canonicalIp(key);
  return canonical === key ? null : canonical;
}

// eslint-disable-next-line no-control-regex
const INTERNATIONAL_NAME = /[^\x00-\x7f]|(?:^|[.@])xn--/i;

/**
 * A domain or address key with an IDN in the spelling domains are compared in (domain-key.ts: A-labels, IDNA-mapped,
 * lower case), its local part in NFC as the envelope has it: `bücher.example` or `jörg@bücher.example` in a table
 * matched the U-labels of an SMTPUTF8 transaction but not the A-labels of an ASCII one (`xn--…` keys the reverse),
 * so a client chose by its MAIL FROM whether a deny entry saw it. Null: no such key, or already in that spelling.
 */
function nameKey(key: string): string | null {
  if (!INTERNATIONAL_NAME.test(key)) return null;
  const at = key.lastIndexOf('@');
  const domain = domainKey(key.slice(at + 1));
  if (!domain) return null;
  const canonical = at < 0 ? domain : `${key.slice(0, at).normalize('NFC')}@${domain}`;
  return canonical === key ? null : canonical;
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
  else await parseMapping(table, withoutByteOrderMark(text), file, format);
  return table;
}

/**
 * Postfix-style (postmap's source format): `key  value` per logical line, `#` comment lines. A line that starts
 * with whitespace continues the logical line before it, as postmap reads it (readllines(): joined as they are,
 * comment and blank lines in between skipped), so a migrated table's long value lists load unchanged. Postfix
 * only warns about a continuation with nothing to continue and drops it; here that is an error. Whitespace is
 * postmap's (ASCII: space, tab, vertical tab, form feed), not JavaScript's \s: a line led by a no-break space
 * (pasted from a web page) continued the entry before it, one more sender for that login, where postmap reads it
 * as a line of its own and drops it; such a line is now an error at its line.
 */
async function parsePostfix(table: LookupTable, text: string, file: string): Promise<void> {
  const giveWay = slicer();
  let entry: { text: string; line: number } | null = null;
  const add = (): void => {
    if (!entry) return;
    const m = /^([^ \t\v\f]+)[ \t\v\f]+(.*[^ \t\v\f])[ \t\v\f]*$/.exec(entry.text);
    if (!m) throw new TableError(file, entry.line, `expected "key value", got ${quoteLine(entry.text)}`);
    if (!table.set(m[1]!, m[2]!)) throw new TableError(file, entry.line, `duplicate key ${quoteToken(m[1]!)}`);
    entry = null;
  };
  for (const [raw, line] of linesOf(text)) {
    const turn = giveWay();
    if (turn) await turn;
    if (/^[ \t\v\f]*(#|$)/.test(raw)) continue;
    if (/^[ \t\v\f]/.test(raw)) {
      if (!entry) throw new TableError(file, line, 'line starts with whitespace but there is no entry to continue');
      entry.text += raw;
      continue;
    }
    add();
    entry = { text: raw, line };
  }
  add();
}

/** JSON.parse refuses a byte-order mark (Notepad's "UTF-8 with BOM"), quoting it as an unexpected token no one can see. */
function withoutByteOrderMark(text: string): string {
  return text.startsWith('\uFEFF') ? text.slice(1) : text;
}

async function parseMapping(table: LookupTable, text: string, file: string, format: 'yaml' | 'json'): Promise<void> {
  const giveWay = slicer();
  for await (const [k, v, line] of mappingEntriesOffThread(text, file, format)) {
    const turn = giveWay();
    if (turn) await turn;
    if (v === null) throw new TableError(file, line, `value of ${quoteToken(k)} must be a scalar`);
    // The same key twice, or in two spellings (a pin as hex and as base64url, or in two cases): one would be lost.
    if (!table.set(k, String(v))) throw new TableError(file, line ?? lineOfKey(text, k), `duplicate key ${quoteToken(k)}`);
  }
}

/**
 * The parse of a YAML or JSON file is one call (some 20,000 to 100,000 entries a second): on the event loop, a
 * table of tens of thousands of entries held every session for seconds at a reload, and the watchdogs killed each
 * process as hung (under postern serve, all at once). It runs on a thread of its own, which hands the entries
 * back a batch at a time.
 */
async function* mappingEntriesOffThread(text: string, file: string, format: 'yaml' | 'json'): AsyncGenerator<Entry> {
  const thread = typescriptWorker(new URL('./mapping-parse-thread.ts', import.meta.url), { workerData: { text, format } });
  try {
    for (;;) {
      const reply = await nextReply(thread, file);
      if ('error' in reply) throw new TableError(file, reply.error.line, reply.error.message);
      yield* reply.entries;
      if (reply.done) return;
      thread.postMessage('next');
    }
  } finally {
    void thread.terminate();
  }
}

function nextReply(thread: Worker, file: string): Promise<MappingReply> {
  return new Promise((resolve, reject) => {
    const settle = (): void => { thread.off('message', onMessage).off('error', onError).off('exit', onExit); };
    const onMessage = (reply: MappingReply): void => { settle(); resolve(reply); };
    const onError = (err: Error): void => { settle(); reject(new TableError(file, undefined, `cannot parse: ${err.message}`)); };
    const onExit = (): void => { settle(); reject(new TableError(file, undefined, 'cannot parse: the parsing thread stopped')); };
    thread.on('message', onMessage).on('error', onError).on('exit', onExit);
  });
}

/** The first line whose entry starts with `key` (quoted or not), for a problem found after the parse. */
function lineOfKey(text: string, key: string): number | undefined {
  const i = text.split(/\r?\n/).findIndex((line) => line.trimStart().replace(/^[{,]\s*/, '').replace(/^["']/, '').startsWith(key));
  return i < 0 ? undefined : i + 1;
}

export async function loadTables(config: Config): Promise<Map<string, LookupTable>> {
  const entries = await Promise.all(Object.entries(config.tables).map(async ([name, spec]) => [name, await loadTable(name, spec)] as const));
  return new Map(entries);
}
