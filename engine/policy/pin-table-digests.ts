/**
 * Keys of a pin table that can never match. A pin is the SHA-256 of the public key (mox's key id, Postfix's
 * pkey_fingerprint with smtpd_tls_fingerprint_digest = sha256); a migrated Postfix table holds md5 or sha1
 * fingerprints as often (the default below compatibility_level 3.6), which here named no account, silently.
 * (A SHA-256 certificate fingerprint has a pin's length: it is told apart when a certificate shows it, see
 * session-policy.ts.)
 */
import type { Config } from '../config/schema.ts';
import type { LookupTable } from './lookup-tables.ts';
import { digestOfLength, normalizeFingerprint } from '../certificates/index.ts';

export interface PinTableWarning { path: PropertyKey[]; name: string; message: string }

export function pinTableDigests(config: Config, tables: ReadonlyMap<string, LookupTable>): PinTableWarning[] {
  const out: PinTableWarning[] = [];
  const users = [
    ...config.listeners.map((l, i) => ({ name: l.name, table: l.certificateIdentity.pins, path: ['listeners', i, 'certificateIdentity', 'pins'] })),
    ...config.policyServices.map((p, i) => ({ name: p.name, table: p.certificateIdentity.pins, path: ['policyServices', i, 'certificateIdentity', 'pins'] })),
  ];
  for (const { name, table, path } of users) {
    const t = table ? tables.get(table) : undefined;
    if (!t) continue;
    const wrong = new Map<string, string>(); // canonical hex → its digest's name
    for (const key of t.keys()) {
      const n = normalizeFingerprint(key);
      if (n && n.length !== 32) wrong.set(n.hex, digestOfLength(n.length)!);
    }
    if (!wrong.size) continue;
    const shown = [...wrong].slice(0, 3).map(([hex, digest]) => `${hex} (${digest})`).join(', ');
    out.push({
      path, name,
      message: `pin table ${table} (${t.file}) has ${wrong.size} key${wrong.size === 1 ? '' : 's'} that can never match: ${shown}${wrong.size > 3 ? ', …' : ''}: `
        + 'a pin is the SHA-256 of the public key, not an md5 or sha1 fingerprint (Postfix\'s smtpd_tls_fingerprint_digest); '
        + 'write the pin instead (postern pins add <account> <certificate>)',
    });
  }
  return out;
}
