/**
 * Everything a generation is built from, as files and folders on disk, and a digest over their contents.
 * The digest lets the reloader ignore events that did not change anything (editors write twice, touch,
 * or swap a symlink to identical content): each settled change gives exactly one reload.
 */
import { createHash } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { LoadedConfig } from '../config/load-config.ts';

export interface WatchedInputs {
  /** Files whose content matters (config, tables, users, TLS material). */
  files: string[];
  /** Folders whose scripts matter. */
  folders: string[];
}

export function watchedInputs(loaded: LoadedConfig): WatchedInputs {
  const c = loaded.config;
  const files = new Set<string>();
  if (!loaded.file.startsWith('(')) files.add(loaded.file);
  for (const t of Object.values(c.tables)) files.add(typeof t === 'string' ? t : t.file);
  if (c.users) files.add(c.users);
  for (const l of c.listeners) {
    for (const f of [l.tls.cert, l.tls.key, ...l.tls.caFiles, ...l.tls.crlFiles]) if (f) files.add(f);
  }
  for (const cc of Object.values(c.delivery.clientCertificates)) { files.add(cc.cert); files.add(cc.key); }
  for (const f of Object.values(c.delivery.caFiles)) files.add(f);
  const folders = new Set([c.scripts, ...c.listeners.map((l) => l.scripts ?? c.scripts)]);
  return { files: [...files].sort(), folders: [...folders].sort() };
}

/** A digest of the inputs' current contents (missing files count as missing, not as errors). */
export async function digestInputs(inputs: WatchedInputs): Promise<string> {
  const hash = createHash('sha256');
  for (const file of inputs.files) {
    hash.update(`file ${file}\0`);
    hash.update(await readFile(file).catch(() => Buffer.from('\0missing')));
  }
  for (const folder of inputs.folders) {
    const names = (await readdir(folder).catch(() => [] as string[])).filter((n) => /\.(ts|js|mjs)$/.test(n)).sort();
    for (const name of names) {
      hash.update(`script ${folder}/${name}\0`);
      hash.update(await readFile(join(folder, name)).catch(() => Buffer.from('\0missing')));
    }
  }
  return hash.digest('hex');
}
