/**
 * Reads postern.yaml: YAML parse with positions, schema validation, cross-field checks, and path
 * resolution against the file's folder. Every problem names file, line and key path; none is fatal alone,
 * all are reported together and the configuration is refused.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { domainToASCII } from 'node:url';
import { dirname, isAbsolute, resolve } from 'node:path';
import type * as Yaml from 'yaml';
import type { Document } from 'yaml';
import type { Config } from './schema.ts';
import { MAX_DKIM_SIGNATURES } from './local-domain.ts';
import { listenOverlap } from './listen-overlap.ts';
import { ConfigError, isPlainKey, keyPath, quotedKey, type ConfigProblem } from './config-error.ts';
import { InputFileError, readInputFileSync } from './input-file.ts';
import { keySuggestion } from './key-suggestion.ts';
import { configSizeProblem, MAX_CONFIG_BYTES } from './config-size.ts';
import { containsPrivateKey, hideKeyMaterial, privateKeyFileMessage } from '../certificates/key-material.ts';

export interface LoadedConfig {
  config: Config;
  /** Absolute path of the file, or `(embedded default)`. */
  file: string;
  /** Folder that relative paths were resolved against. */
  baseDir: string;
  /**
   * The scripts folders the file names itself (resolved), with the key and where: such a folder must
   * exist (generation/scripts-folders.ts). The default top-level `scripts` is not among them when the file
   * leaves the key out, nor when the file is the embedded default.
   */
  scriptFolders?: readonly NamedFolder[];
  /**
   * Where a key path of the configuration is written (line and column of its value, else of the nearest
   * key above it that is written): for problems found after the parse, such as a file a key names.
   */
  locate?(path: ReadonlyArray<PropertyKey>): { line?: number; column?: number };
  /** The text parsed: what a record of the content a generation was built from holds for the file. */
  text?: string;
}

export interface NamedFolder {
  folder: string;
  /** Key path, e.g. `listeners[0].scripts`. */
  key: string;
  line?: number;
  column?: number;
}

// The YAML parser and the schema (with zod: ~100 ms of CPU a process), loaded by the first parse: a child of `postern
// serve` handed its supervisor's parse of the same text (start-config.ts) needs neither at start.
const require = createRequire(import.meta.url);
const yaml = (): typeof Yaml => require('yaml') as typeof Yaml;
const schema = (): typeof import('./schema.ts') => require('./schema.ts') as typeof import('./schema.ts');

/** The label of the built-in configuration (engine/config/default-config.ts), which names `scripts` for the docs' sake only. */
export const EMBEDDED_DEFAULT = '(embedded default)';

/**
 * The document as plain values. The yaml package refuses, while building them, an alias expanded too often (a
 * "billion laughs" file: a few lines that would expand to gigabytes) with a bare ReferenceError: a
 * configuration error naming the file, like any other, and the running generation kept at a reload.
 */
function documentValue(doc: Document, file: string): unknown {
  try {
    return doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new ConfigError([{ file, message: `cannot be read: ${(err as Error).message} (YAML aliases expand to too much)` }]);
  }
}

/** Parse and validate configuration text. `file` names it in messages; `baseDir` anchors relative paths. */
export function parseConfig(text: string, file: string, baseDir: string): LoadedConfig {
  const tooLarge = configSizeProblem(text);
  if (tooLarge) throw new ConfigError([{ file, ...tooLarge }]);
  const { LineCounter, parseDocument } = yaml();
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, merge: true });
  if (doc.errors.length) {
    throw new ConfigError(doc.errors.map((e) => {
      const lp = lineCounter.linePos(e.pos[0]);
      return { file, line: lp.line, column: lp.col, message: hideKeyMaterial(e.message.split('\n')[0]! + yamlErrorHint(e.code, text, e.pos[0])) };
    }));
  }
  const locate = (path: ReadonlyArray<PropertyKey>, atKey = false): { line?: number; column?: number } => {
    const pos = nodeOffset(doc, path, atKey);
    if (pos === undefined) return {};
    const lp = lineCounter.linePos(pos);
    return { line: lp.line, column: lp.col };
  };
  const parsed = schema().configSchema.safeParse(documentValue(doc, file) ?? {});
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.flatMap((issue) => {
      // Keys and values of the file show up in these: a key pasted by mistake must not.
      if (issue.code !== 'unrecognized_keys') return [{ file, ...locate(issue.path), path: hideKeyMaterial(keyPath(issue.path)), message: hideKeyMaterial(issue.message) }];
      // Each unknown key is reported at the key itself, not at its parent object, with the key it likely meant
      // (zod gives the keys of one object in one issue: two typos there are two lines, as two anywhere else).
      return issue.keys.map((key) => {
        const path = [...issue.path, key];
        return { file, ...locate(path, true), path: hideKeyMaterial(keyPath(path)), message: hideKeyMaterial(`Unrecognized key: ${quotedKey(key)}`) + keySuggestion(issue.path, key) };
      });
    }));
  }
  const config = resolvePaths(parsed.data, baseDir);
  const problems = crossCheck(config).map((p) => ({ file, ...locate(p.path), path: keyPath(p.path), message: hideKeyMaterial(p.message) }));
  if (problems.length) throw new ConfigError(problems);
  const scriptFolders = namedScriptFolders(config, file !== EMBEDDED_DEFAULT && doc.has('scripts')).map((f) => ({ ...f, key: keyPath(f.path), ...locate(f.path) }));
  return { config, file, baseDir, scriptFolders: scriptFolders.map(({ path: _, ...f }) => f), locate: (path) => locate(path), text };
}

/**
 * What the yaml package's message leaves out: which key is the duplicate (its position is one character of it) and
 * what to do about a tab. Postern's configuration is often edited on a server with whatever editor is there.
 */
function yamlErrorHint(code: string, text: string, at: number): string {
  if (code === 'TAB_AS_INDENT') return ' (indent with spaces)';
  if (code !== 'DUPLICATE_KEY') return '';
  const key = /^("(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^:#\n]+?)\s*:/.exec(text.slice(at, at + 300))?.[1];
  if (!key) return '';
  // A quoted key as the file spells it, unless a terminal would act on what is in it (a raw escape character).
  const quoted = key.startsWith('"') || key.startsWith("'");
  const shown = quoted && isPlainKey(key) ? key : quotedKey(quoted ? key.slice(1, -1) : key);
  return `: ${shown} is set twice in the same mapping (the other one is above): keep one`;
}

/** Every scripts folder key set in the configuration, with its path; the top-level one only when `topLevel`. */
function namedScriptFolders(c: Config, topLevel: boolean): Array<{ folder: string; path: PropertyKey[] }> {
  const out: Array<{ folder: string; path: PropertyKey[] }> = topLevel ? [{ folder: c.scripts, path: ['scripts'] }] : [];
  c.listeners.forEach((l, i) => {
    if (l.scripts) out.push({ folder: l.scripts, path: ['listeners', i, 'scripts'] });
    if (l.shadowScripts) out.push({ folder: l.shadowScripts, path: ['listeners', i, 'shadowScripts'] });
  });
  c.policyServices.forEach((p, i) => { if (p.scripts) out.push({ folder: p.scripts, path: ['policyServices', i, 'scripts'] }); });
  return out;
}

/** Why postern.yaml must be a regular file for `postern serve` (`postern check` reads a pipe, and says this). */
export const SERVE_READS_AGAIN = ' (each process of postern serve, and each reload, reads it again: give it a file)';

/**
 * `regularFileOnly`: a reload's look at the file (readInputFileSync: a FIFO in its place is refused, not opened,
 * which would block for ever), and `postern serve`'s start (its processes read it again). Other commands read
 * whatever the path is: `postern check --config <(generate)` has its writer then.
 */
export function loadConfigFile(path: string, opts: { regularFileOnly?: boolean } = {}): LoadedConfig {
  const { file, text } = readConfigFile(path, opts);
  return parseConfig(text, file, dirname(file));
}

/** The text of the configuration file at `path` (resolved), refused as loadConfigFile refuses it before the parse. */
export function readConfigFile(path: string, { regularFileOnly = false }: { regularFileOnly?: boolean } = {}): { file: string; text: string } {
  const file = resolve(path);
  let text: string;
  try {
    text = regularFileOnly ? readInputFileSync(file, MAX_CONFIG_BYTES).toString('utf8') : readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError([{ file, message: `cannot read: ${(err as Error).message}${err instanceof InputFileError && err.reason === 'not a file' ? SERVE_READS_AGAIN : ''}` }]);
  }
  if (containsPrivateKey(text)) throw new ConfigError([{ file, message: privateKeyFileMessage('a configuration') }]);
  return { file, text };
}

/** What dataDirDespiteErrors found: the folder (resolved), and whether the file names it (else the default). */
export interface DataDirDespiteErrors { dataDir: string; named: boolean; deliveryOn: boolean }

/**
 * The data directory a configuration file refused with `error` names, read from the file anyway: a broken
 * postern.yaml is when an administrator may most need to look at the queue (`postern queue`). Null when it cannot
 * be known: the file unreadable or not YAML (or not a mapping), or its `dataDir` key itself in error. `named`: the
 * file sets `dataDir` (not the default). `deliveryOn`: what `delivery.enabled` seems to say (a display hint only).
 */
export function dataDirDespiteErrors(path: string, error: ConfigError): DataDirDespiteErrors | null {
  if (error.problems.some((p) => p.path === undefined || p.path === 'dataDir')) return null; // the file as a whole, or dataDir itself
  const file = resolve(path);
  let value: unknown;
  try {
    const doc = yaml().parseDocument(readFileSync(file, 'utf8'), { merge: true });
    if (doc.errors.length) return null;
    value = documentValue(doc, file) ?? {};
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const raw = value as { dataDir?: unknown; delivery?: unknown };
  const dataDir = schema().configSchema.shape.dataDir.safeParse(raw.dataDir);
  if (!dataDir.success) return null;
  const delivery = raw.delivery as { enabled?: unknown } | null | undefined;
  return {
    dataDir: isAbsolute(dataDir.data) ? dataDir.data : resolve(dirname(file), dataDir.data),
    named: raw.dataDir !== undefined,
    deliveryOn: typeof delivery === 'object' && delivery !== null && delivery.enabled !== false,
  };
}

/**
 * Character offset of what `path` names: the key itself when `atKey` (unknown keys), else the value,
 * falling back to the nearest ancestor that exists.
 */
function nodeOffset(doc: Document, path: ReadonlyArray<PropertyKey>, atKey: boolean): number | undefined {
  if (atKey && path.length) {
    const parent = path.length === 1 ? doc.contents : doc.getIn(path.slice(0, -1) as unknown[], true);
    if (yaml().isMap(parent)) {
      const pair = parent.items.find((it) => (it.key as { value?: unknown } | null)?.value === path.at(-1));
      const range = (pair?.key as { range?: number[] } | undefined)?.range;
      if (range) return range[0];
    }
  }
  for (let n = path.length; n >= 0; n--) {
    const node = n === 0 ? doc.contents : doc.getIn(path.slice(0, n) as unknown[], true);
    const range = (node as { range?: number[] } | null)?.range;
    if (range) return range[0];
  }
  return undefined;
}

function resolvePaths(config: Config, baseDir: string): Config {
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(baseDir, p));
  const c = structuredClone(config);
  c.dataDir = abs(c.dataDir);
  c.scripts = abs(c.scripts);
  if (c.users) c.users = abs(c.users);
  if (c.localRecipients) c.localRecipients = abs(c.localRecipients);
  for (const [name, t] of Object.entries(c.tables)) {
    c.tables[name] = typeof t === 'string' ? abs(t) : { ...t, file: abs(t.file) };
  }
  for (const l of c.listeners) {
    if (l.tls.cert) l.tls.cert = abs(l.tls.cert);
    if (l.tls.key) l.tls.key = abs(l.tls.key);
    l.tls.caFiles = l.tls.caFiles.map(abs);
    l.tls.crlFiles = l.tls.crlFiles.map(abs);
    if (l.scripts) l.scripts = abs(l.scripts);
    if (l.shadowScripts) l.shadowScripts = abs(l.shadowScripts);
  }
  for (const p of c.policyServices) {
    if (p.scripts) p.scripts = abs(p.scripts);
    if (p.listen.startsWith('unix:')) p.listen = `unix:${abs(p.listen.slice(5))}`;
  }
  for (const cc of Object.values(c.delivery.clientCertificates)) {
    cc.cert = abs(cc.cert);
    cc.key = abs(cc.key);
  }
  for (const [name, file] of Object.entries(c.delivery.caFiles)) c.delivery.caFiles[name] = abs(file);
  for (const key of Object.values(c.delivery.dkim)) key.privateKey = abs(key.privateKey);
  if (c.pki.dir) c.pki.dir = abs(c.pki.dir);
  return c;
}

interface PathProblem { path: PropertyKey[]; message: string }

/**
 * Every socket the server binds (listeners, policy services, the account page, the admin listener) against
 * the ones before it: two on one port fail the start with EADDRINUSE, so `postern check` refuses them.
 */
function sharedPorts(c: Config): PathProblem[] {
  const binds: Array<{ path: PropertyKey[]; name: string; listen: string }> = [
    ...c.listeners.map((l, i) => ({ path: ['listeners', i, 'listen'], name: `listeners[${i}]`, listen: l.listen })),
    ...c.policyServices.map((p, i) => ({ path: ['policyServices', i, 'listen'], name: `policyServices[${i}]`, listen: p.listen })),
    ...(c.accounts ? [{ path: ['accounts', 'listen'], name: 'accounts.listen', listen: c.accounts.listen }] : []),
    ...(c.admin ? [{ path: ['admin', 'listen'], name: 'admin.listen', listen: c.admin.listen }] : []),
  ];
  const out: PathProblem[] = [];
  binds.forEach((b, i) => {
    for (const earlier of binds.slice(0, i)) {
      const why = b.listen.startsWith('unix:') ? (b.listen === earlier.listen ? 'the same socket file' : null) : listenOverlap(earlier.listen, b.listen);
      if (!why) continue;
      out.push({ path: b.path, message: `address already used by ${earlier.name} (${earlier.listen}: ${why})` });
      break;
    }
  });
  return out;
}

/** Rules that span fields: things the schema alone cannot say. */
function crossCheck(c: Config): PathProblem[] {
  const out: PathProblem[] = [];
  const seenNames = new Map<string, number>();
  c.listeners.forEach((l, i) => {
    const at = (...p: PropertyKey[]): PropertyKey[] => ['listeners', i, ...p];
    if (seenNames.has(l.name)) out.push({ path: at('name'), message: `duplicate listener name (also listeners[${seenNames.get(l.name)}])` });
    seenNames.set(l.name, i);
    const port = Number(l.listen.slice(l.listen.lastIndexOf(':') + 1));
    if (port > 65535) out.push({ path: at('listen'), message: 'port must be 0-65535 (0: any free port)' });
    const tls = l.tls.mode !== 'none';
    if (tls && (!l.tls.cert || !l.tls.key)) out.push({ path: at('tls'), message: `tls.mode ${l.tls.mode} needs tls.cert and tls.key` });
    if (!tls && l.tls.clientCertificates !== 'none') out.push({ path: at('tls', 'clientCertificates'), message: 'client certificates need tls.mode starttls or implicit' });
    if (!tls && l.requireTls) out.push({ path: at('requireTls'), message: 'requireTls needs tls.mode starttls or implicit' });
    if (l.tls.clientCertificates === 'require' && l.tls.caFiles.length === 0 && !l.certificateIdentity.pins) {
      out.push({ path: at('tls', 'caFiles'), message: 'clientCertificates: require needs caFiles to verify against (or certificateIdentity.pins)' });
    }
    if (l.tls.crlFiles.length && !l.tls.caFiles.length) out.push({ path: at('tls', 'crlFiles'), message: 'CRLs need caFiles' });
    if (l.auth.mechanisms.includes('EXTERNAL') && l.tls.clientCertificates === 'none') {
      out.push({ path: at('auth', 'mechanisms'), message: 'EXTERNAL needs tls.clientCertificates request or require' });
    }
    const id = l.certificateIdentity;
    if (id.field !== 'none' && l.tls.caFiles.length === 0) out.push({ path: at('certificateIdentity', 'field'), message: 'a certificate field identifies an account only when verified: set tls.caFiles' });
    if (id.pins && !(id.pins in c.tables)) out.push({ path: at('certificateIdentity', 'pins'), message: `no table named "${id.pins}" under tables` });
    if ((id.field !== 'none' || id.pins) && l.tls.clientCertificates === 'none') out.push({ path: at('certificateIdentity'), message: 'needs tls.clientCertificates request or require' });
    if (l.auth.required && l.auth.mechanisms.length === 0 && !(id.autoLogin && (id.pins || id.field !== 'none'))) {
      out.push({ path: at('auth', 'required'), message: 'auth.required needs auth.mechanisms (or certificateIdentity with autoLogin)' });
    }
    if (l.senderLogin.table && !(l.senderLogin.table in c.tables)) out.push({ path: at('senderLogin', 'table'), message: `no table named "${l.senderLogin.table}" under tables` });
    if (l.relayClientCertificates && l.tls.caFiles.length === 0) out.push({ path: at('relayClientCertificates'), message: 'needs tls.caFiles (which CA may relay?)' });
  });
  c.policyServices.forEach((p, i) => {
    const at = (...q: PropertyKey[]): PropertyKey[] => ['policyServices', i, ...q];
    if (seenNames.has(p.name)) out.push({ path: at('name'), message: 'name already used by a listener or policy service' });
    seenNames.set(p.name, i);
    for (const [key, table] of [['certificateIdentity', p.certificateIdentity.pins], ['relayClientCertificatesTable', p.relayClientCertificatesTable]] as const) {
      if (table && !(table in c.tables)) out.push({ path: at(key), message: `no table named "${table}" under tables` });
    }
    if (p.certificateIdentity.pins && p.fingerprintDigest !== 'sha256') {
      out.push({ path: at('certificateIdentity', 'pins'), message: 'pins are SPKI SHA-256: needs fingerprintDigest sha256 (Postfix smtpd_tls_fingerprint_digest = sha256)' });
    }
  });
  out.push(...sharedPorts(c));
  if (c.listeners.length === 0 && c.policyServices.length === 0) out.push({ path: ['listeners'], message: 'needs at least one listener (or a policy service)' });
  const d = c.delivery;
  if (d.tls.clientCertificate && !(d.tls.clientCertificate in d.clientCertificates)) {
    out.push({ path: ['delivery', 'tls', 'clientCertificate'], message: `no client certificate named "${d.tls.clientCertificate}" under delivery.clientCertificates` });
  }
  if (d.tls.ca && !(d.tls.ca in d.caFiles)) out.push({ path: ['delivery', 'tls', 'ca'], message: `no CA named "${d.tls.ca}" under delivery.caFiles` });
  // A domain listed under several keys is signed with each (an RSA and an Ed25519 key, RFC 8463 §4), at most
  // MAX_DKIM_SIGNATURES; listed twice under one key, one spelling is a mistake for another domain.
  const signers = new Map<string, string[]>();
  for (const [name, key] of Object.entries(d.dkim)) {
    const own = new Set<string>();
    for (const [i, domain] of key.senderDomains.entries()) {
      // By A-labels, as the keys are chosen (delivery/dkim.ts): bücher.example and xn--bcher-kva.example are one domain.
      const id = domainToASCII(domain.replace(/\.$/, '')) || domain.toLowerCase();
      const at = ['delivery', 'dkim', name, 'senderDomains', i];
      if (own.has(id)) {
        out.push({ path: at, message: `${domain} is listed twice under delivery.dkim.${name}` });
        continue;
      }
      own.add(id);
      const keys = signers.get(id) ?? [];
      if (keys.length === MAX_DKIM_SIGNATURES) {
        out.push({ path: at, message: `${domain} is listed under more than ${MAX_DKIM_SIGNATURES} keys (one signature each): ${keys.map((k) => `delivery.dkim.${k}`).join(', ')} already sign it` });
        continue;
      }
      signers.set(id, [...keys, name]);
    }
  }
  if (c.accounts) {
    const l = c.listeners.find((x) => x.name === c.accounts!.listener);
    if (!l) out.push({ path: ['accounts', 'listener'], message: `no listener named "${c.accounts.listener}"` });
    else if (l.tls.mode === 'none') out.push({ path: ['accounts', 'listener'], message: `listener ${l.name} has tls.mode none: the account page is HTTPS only, with that listener's certificate` });
  }
  // A script waits for the store within its own time limit; past it the call is cut off, not failed by the store.
  if (c.store.redis && c.store.redis.timeoutMs >= c.sandbox.timeoutMs) {
    out.push({ path: ['store', 'redis', 'timeoutMs'], message: `must be below sandbox.timeoutMs (${c.sandbox.timeoutMs} ms)` });
  }
  if (c.dns.timeoutMs !== undefined && c.dns.timeoutMs >= c.sandbox.timeoutMs) {
    out.push({ path: ['dns', 'timeoutMs'], message: `must be below sandbox.timeoutMs (${c.sandbox.timeoutMs} ms)` });
  }
  return out;
}
