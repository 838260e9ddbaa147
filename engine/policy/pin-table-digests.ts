/**
 * Keys of a pin table, or of a policy service's relay table, that can never match. A pin is the SHA-256 of the public key (mox's key id, Postfix's
 * pkey_fingerprint with smtpd_tls_fingerprint_digest = sha256); a migrated Postfix table holds md5 or sha1
 * fingerprints as often (the default below compatibility_level 3.6), which here named no account, silently.
 * (A SHA-256 certificate fingerprint has a pin's length: it is told apart when a certificate shows it, see
 * session-policy.ts.) A policy service's relayClientCertificatesTable is matched against what Postfix sends, in the
 * service's fingerprintDigest: keys in another digest (an md5 relay_clientcerts after a move to sha256) never match.
 */
import type { Config } from '../config/schema.ts';
import type { LookupTable } from './lookup-tables.ts';
import { digestOfLength, normalizeFingerprint } from '../certificates/index.ts';

export interface PinTableWarning { path: PropertyKey[]; name: string; message: string }

export function pinTableDigests(config: Config, tables: ReadonlyMap<string, LookupTable>): PinTableWarning[] {
  const out: PinTableWarning[] = [];
  const users: Array<{ name: string; table: string | undefined; path: PropertyKey[]; relay: boolean; digest?: string }> = [
    ...config.listeners.map((l, i) => ({ name: l.name, table: l.certificateIdentity.pins, path: ['listeners', i, 'certificateIdentity', 'pins'], relay: false })),
    ...config.policyServices.flatMap((p, i) => [
      { name: p.name, table: p.certificateIdentity.pins, path: ['policyServices', i, 'certificateIdentity', 'pins'], relay: false },
      // Keyed by what Postfix sends: fingerprints in the service's one digest.
      { name: p.name, table: p.relayClientCertificatesTable, path: ['policyServices', i, 'relayClientCertificatesTable'], relay: true, digest: p.fingerprintDigest },
    ]),
  ];
  for (const { name, table, path, relay, digest = 'sha256' } of users) {
    const t = table ? tables.get(table) : undefined;
    if (!t) continue;
    const wrong = new Map<string, string>(); // canonical hex → its digest's name
    for (const key of t.keys()) {
      const n = normalizeFingerprint(key);
      const sent = n && digestOfLength(n.length);
      if (n && sent !== digest) wrong.set(n.hex, sent!);
    }
    if (!wrong.size) continue;
    const shown = [...wrong].slice(0, 3).map(([hex, d]) => `${hex} (${d})`).join(', ');
    const keys = `${wrong.size} key${wrong.size === 1 ? '' : 's'} that can never match: ${shown}${wrong.size > 3 ? ', …' : ''}: `;
    out.push({
      path, name,
      message: relay
        ? `relay table ${table} (${t.file}) has ${keys}Postfix sends fingerprints in its smtpd_tls_fingerprint_digest, here fingerprintDigest ${digest}; `
          + 'recompute them in that digest (md5 tables are from before compatibility_level 3.6)'
        : `pin table ${table} (${t.file}) has ${keys}a pin is the SHA-256 of the public key, not an md5 or sha1 fingerprint (Postfix's smtpd_tls_fingerprint_digest); `
          + 'write the pin instead (postern pins add <account> <certificate>)',
    });
  }
  return out;
}
