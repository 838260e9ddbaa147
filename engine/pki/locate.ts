/**
 * Where a configuration keeps what the commands change: the CA folder (`pki.dir`, else a listener's CA
 * file with its key beside it: the development PKI) and the listeners' pin tables.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { Config } from '../config/schema.ts';
import { pkiPaths } from './layout.ts';
import { readInventory } from './inventory.ts';
import { listPins } from './pins-file.ts';

/** The CA folder: `override` (--dir), `pki.dir`, or the folder of a listener's CA file that has ca.key beside it. */
export function pkiDirOf(config: Config, override?: string): string {
  if (override) return resolve(override);
  if (config.pki.dir) return config.pki.dir;
  for (const l of config.listeners) {
    for (const f of l.tls.caFiles) {
      const dir = dirname(f);
      if (existsSync(join(dir, 'ca.key')) && resolve(f) === pkiPaths(dir).caCert) return dir;
    }
  }
  throw new Error('no CA folder: set pki.dir in the configuration (made by "postern pki init --dir DIR") or pass --dir');
}

export interface PinTableRef {
  /** The listeners that use it. */
  listeners: string[];
  table: string;
  file: string;
}

/** The pin table of `listener` (a listener or a policy service; or the one all of them with pins share). */
export function pinTableOf(config: Config, listener?: string): PinTableRef {
  const users = [...config.listeners, ...config.policyServices];
  if (listener && !users.some((l) => l.name === listener)) throw new Error(`no listener or policy service named "${listener}"`);
  const tables = new Map<string, PinTableRef & { format: string }>();
  for (const l of users) {
    const name = l.certificateIdentity.pins;
    if (!name || (listener && l.name !== listener)) continue;
    const spec = config.tables[name]!;
    const ref = tables.get(name) ?? { listeners: [], table: name, file: typeof spec === 'string' ? spec : spec.file, format: typeof spec === 'string' ? 'postfix' : spec.format };
    ref.listeners.push(l.name);
    tables.set(name, ref);
  }
  if (!tables.size) throw new Error(listener ? `${listener} has no certificateIdentity.pins table` : 'no listener or policy service has a certificateIdentity.pins table');
  if (tables.size > 1) throw new Error(`listeners use different pin tables (${[...tables.values()].map((t) => `${t.table}: ${t.listeners.join(', ')}`).join('; ')}): choose one with --listener`);
  const { format, ...ref } = [...tables.values()][0]!;
  if (format !== 'postfix') throw new Error(`table "${ref.table}" (${ref.file}) is ${format}: postern pins writes postfix-format tables ("pin account" lines) only`);
  return ref;
}

/** Device names by certificate fingerprint (the CA's inventory) and by pin (the pin tables' comments). */
export async function deviceNames(config: Config): Promise<{ byFingerprint: Map<string, string>; byPin: Map<string, string> }> {
  const byFingerprint = new Map<string, string>();
  const byPin = new Map<string, string>();
  let dir: string | null = null;
  try { dir = pkiDirOf(config); } catch { /* no CA folder: names from pins only */ }
  if (dir && existsSync(pkiPaths(dir).caCert)) {
    const inv = await readInventory(dir).catch(() => null);
    for (const c of inv?.certificates ?? []) byFingerprint.set(c.fingerprintSha256, c.device);
  }
  for (const f of pinTableFiles(config)) for (const p of await listPins(f).catch(() => [])) if (p.device) byPin.set(p.pinSha256, p.device);
  return { byFingerprint, byPin };
}

/**
 * The files of every pin table that `postern pins` can edit (postfix format), each once: the listeners' and the
 * policy services' (Postfix checks no CRL, so there a revoked key names its account until its line goes).
 */
export function pinTableFiles(config: Config): string[] {
  const files = new Set<string>();
  for (const l of [...config.listeners, ...config.policyServices]) {
    const spec = l.certificateIdentity.pins ? config.tables[l.certificateIdentity.pins] : undefined;
    if (spec && (typeof spec === 'string' || spec.format === 'postfix')) files.add(typeof spec === 'string' ? spec : spec.file);
  }
  return [...files];
}
