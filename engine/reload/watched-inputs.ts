/**
 * Everything a generation is built from, as files and folders on disk, and a digest over their contents.
 * The digest lets the reloader ignore events that did not change anything (editors write twice, touch,
 * or swap a symlink to identical content): each settled change gives exactly one reload.
 */
import { createHash } from 'node:crypto';
import { readFile, readdir, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { LoadedConfig } from '../config/load-config.ts';
import { pkiPaths } from '../pki/layout.ts';
import { readsRevokedDevices } from '../pki/revoked-devices.ts';

export interface WatchedInputs {
  /** Files whose content matters (config, tables, users, TLS material). */
  files: string[];
  /** Folders whose scripts matter. */
  folders: string[];
}

/** Names in a scripts folder that count as scripts (the digest and the watcher agree on this). */
const SCRIPT_FILE = /\.(ts|js|mjs)$/;

/**
 * Whether a name in a scripts folder counts as a script. A dot file or `#…` never does (no hook is named so,
 * engine/sandbox/hooks.ts): emacs's lock `.#rcptto.js`, a dangling link it makes when an edit begins and removes
 * at the save, counted, and each edit made two reloads of unchanged scripts (new isolates, new generation).
 */
export function isScriptName(name: string): boolean {
  return SCRIPT_FILE.test(name) && !name.startsWith('.') && !name.startsWith('#');
}

export function watchedInputs(loaded: LoadedConfig): WatchedInputs {
  const c = loaded.config;
  const files = new Set<string>();
  if (!loaded.file.startsWith('(')) files.add(loaded.file);
  for (const t of Object.values(c.tables)) files.add(typeof t === 'string' ? t : t.file);
  if (c.users) files.add(c.users);
  if (c.localRecipients) files.add(c.localRecipients);
  for (const l of c.listeners) {
    for (const f of [l.tls.cert, l.tls.key, ...l.tls.caFiles, ...l.tls.crlFiles]) if (f) files.add(f);
  }
  for (const cc of Object.values(c.delivery.clientCertificates)) { files.add(cc.cert); files.add(cc.key); }
  for (const f of Object.values(c.delivery.caFiles)) files.add(f);
  for (const k of Object.values(c.delivery.dkim)) files.add(k.privateKey);
  // The policy services and the account page read what pki.dir revoked (generation.revokedDevices): a revocation reloads them.
  if (readsRevokedDevices(c)) { const p = pkiPaths(c.pki.dir); files.add(p.inventory); files.add(p.crl); }
  const folders = new Set([
    c.scripts, ...[...c.listeners, ...c.policyServices].map((l) => l.scripts ?? c.scripts),
    ...c.listeners.flatMap((l) => (l.shadowScripts ? [l.shadowScripts] : [])),
  ]);
  return { files: [...files].map((f) => resolve(f)).sort(), folders: [...folders].map((f) => resolve(f)).sort() };
}

/** Both sets of inputs (while a new configuration is tried, the running one's inputs still matter). */
export function unionInputs(a: WatchedInputs, b: WatchedInputs): WatchedInputs {
  return { files: [...new Set([...a.files, ...b.files])].sort(), folders: [...new Set([...a.folders, ...b.folders])].sort() };
}

/**
 * Whether a path the file system reported can change an input: an input file, a scripts folder or a script
 * in it, or a Kubernetes ConfigMap's `..data` / `..<timestamp>` entry beside one. Anything else in the same
 * folders (a log file next to postern.yaml, editor swap files) is not an input.
 */
export function inputMatcher(inputs: WatchedInputs): (path: string) => boolean {
  const files = new Set(inputs.files);
  const fileFolders = new Set(inputs.files.map((f) => dirname(f)));
  const folders = new Set(inputs.folders);
  return (path) => {
    const p = resolve(path);
    if (files.has(p) || folders.has(p)) return true;
    const folder = dirname(p);
    const name = basename(p);
    if (folders.has(folder)) return isScriptName(name) || name.startsWith('..');
    return fileFolders.has(folder) && name.startsWith('..');
  };
}

/**
 * A digest of the inputs' contents. A missing or unreadable file or folder is not an error: its state
 * (ENOENT, EACCES, not a regular file) is part of the digest, so a scripts folder that vanished and one
 * that came back empty differ (a reload refused for the first is retried for the second). `asRead` gives
 * the content a build already read for some files (the configuration), so the digest describes what was
 * built, not what the disk holds a moment later.
 */
export async function digestInputs(inputs: WatchedInputs, asRead: ReadonlyMap<string, Buffer> = new Map(), perFile?: Map<string, string>): Promise<string> {
  const hash = createHash('sha256');
  const take = (file: string, content: Buffer): void => {
    hash.update(content);
    perFile?.set(file, fileDigest(content));
  };
  for (const file of inputs.files) {
    hash.update(`file ${file}\0`);
    take(file, asRead.get(file) ?? await contentOf(file));
  }
  for (const folder of inputs.folders) {
    let names: string[] = [];
    try {
      names = (await readdir(folder)).filter(isScriptName).sort();
      hash.update(`folder ${folder}\0`);
    } catch (err) {
      hash.update(`folder ${folder} ${(err as NodeJS.ErrnoException).code}\0`);
    }
    for (const name of names) {
      hash.update(`script ${folder}/${name}\0`);
      take(join(folder, name), await contentOf(join(folder, name)));
    }
  }
  return hash.digest('hex');
}

/**
 * What `postern status` shows for one input file: the SHA-256 of the content a generation was built from, as
 * `sha256sum` prints it, so an administrator can tell which file on disk differs from the one in force (a
 * refused edit, or a file system whose changes are not reported); a file that could not be read shows why.
 */
function fileDigest(content: Buffer): string {
  if (content[0] === 0) return content.subarray(1).toString('utf8'); // contentOf's stand-in: `ENOENT`, `not a file …`, `large …`
  return createHash('sha256').update(content).digest('hex');
}

/**
 * Files longer than this are digested by their status (size, times, inode), not read: no input is this large,
 * and a file that is (a 1.5 GB log copied into the scripts folder) was read whole into memory by each digest.
 * Loading refuses it anyway (engine/sandbox/load-scripts.ts MAX_SCRIPT_BYTES; tables and keys fail to parse).
 */
const MAX_DIGESTED_BYTES = 64 * 1024 * 1024;

/** A file's bytes, or what stands in its place; only a regular file is opened (a FIFO would block the open forever). */
async function contentOf(file: string): Promise<Buffer> {
  try {
    const s = await stat(file);
    if (!s.isFile()) return Buffer.from(`\0not a file ${s.mode} ${s.ino}`);
    if (s.size > MAX_DIGESTED_BYTES) return Buffer.from(`\0large ${s.size} ${s.mtimeMs} ${s.ctimeMs} ${s.ino}`);
    return await readFile(file);
  } catch (err) {
    return Buffer.from(`\0${(err as NodeJS.ErrnoException).code}`);
  }
}
