/**
 * The accounts other than `identity` that a public key (its SHA-256 pin) already speaks for, in the server's records:
 * pinned in any pin table (a listener's, a Postfix policy service's), in a certificate pki.dir issued, or in a
 * certificate the server has seen name an account (its sightings: a CA of `caFiles` other than pki.dir's, or a
 * pin since removed). Pinned for `identity` as well, that account's device would sign in as `identity` too. The
 * account page refuses such a key without saying whose it is; `postern pins add` and `learn` name them.
 */
import { existsSync } from 'node:fs';
import type { Config } from '../config/schema.ts';
import { pkiPaths } from './layout.ts';
import { readInventory } from './inventory.ts';
import { listPins } from './pins-file.ts';
import { pkiDirOf, pinTableFiles } from './locate.ts';
import { readSightings } from './sightings.ts';

export interface KeyClaim {
  /** The account the key names there. */
  account: string;
  /** Where: `pinned in FILE:LINE`, `issued by pki.dir …`, `seen by the server …`. */
  where: string;
  /** The pin table's file, for a pin. */
  pinTable?: string;
}

export async function otherAccountsOfKey(config: Config, identity: string, pinSha256: string): Promise<KeyClaim[]> {
  const other = (named: string | null | undefined): named is string => !!named && named.toLowerCase() !== identity.toLowerCase();
  const claims: KeyClaim[] = [];
  for (const table of pinTableFiles(config)) {
    for (const p of await listPins(table)) {
      if (p.pinSha256 === pinSha256 && other(p.identity)) claims.push({ account: p.identity, where: `pinned in ${table}:${p.line}${p.device ? ` (device ${p.device})` : ''}`, pinTable: table });
    }
  }
  let dir: string | null = null;
  try { dir = pkiDirOf(config); } catch { /* no CA folder: nothing issued */ }
  if (dir && existsSync(pkiPaths(dir).caCert)) {
    for (const c of (await readInventory(pkiPaths(dir))).certificates) {
      if (c.pinSha256 === pinSha256 && other(c.identity)) claims.push({ account: c.identity, where: `issued by ${dir} (serial ${c.serial}, device ${c.device})` });
    }
  }
  for (const seen of (await readSightings(config.dataDir)).values()) {
    if (seen.pinSha256 !== pinSha256) continue;
    const named = other(seen.identity) ? seen.identity : other(seen.knownAs) ? seen.knownAs : null;
    if (named) claims.push({ account: named, where: `seen by the server naming it (listener ${seen.listener}, last ${seen.lastSeen}, connection ${seen.lastConnection})` });
  }
  return claims;
}
