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
import { quoteToken } from '../certificates/key-material.ts';
import { readInputFile } from '../config/input-file.ts';

export interface PinTableWarning { path: PropertyKey[]; name: string; message: string }

export async function pinTableDigests(config: Config, tables: ReadonlyMap<string, LookupTable>): Promise<PinTableWarning[]> {
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
    const none = new Set<string>(); // keys that are no digest in any form, each entry of the file once
    for (const key of t.keys()) {
      // A spelling's canonical key is judged (a digest in hex): a case-folded base64 pin reads as none itself.
      if (t.isSpelling(key)) continue;
      const n = normalizeFingerprint(key);
      const sent = n && digestOfLength(n.length);
      if (!n) none.add(key);
      else if (sent !== digest) wrong.set(n.hex, sent!);
    }
    if (none.size) out.push({ path, name, message: await noDigestMessage(t, table!, none, relay, digest) });
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

/**
 * Keys that are no digest at all: a pin cut short or with a character lost in a copy, a login address where the pin
 * belongs. Named by line and quoted as the file writes them (the table has them case-folded), unless they look like
 * key material (key-material.ts): a pin cut short is long base64 too.
 */
async function noDigestMessage(t: LookupTable, table: string, keys: Set<string>, relay: boolean, digest: string): Promise<string> {
  let lines: string[] = [];
  try { lines = (await readInputFile(t.file)).toString('utf8').split(/\r?\n/); } catch { /* replaced since it loaded: keys without lines */ }
  const shown = [...keys].slice(0, 3).map((key) => {
    const at = lines.findIndex((line) => writtenKey(line)?.toLowerCase() === key.toLowerCase());
    if (at < 0) return LONG_RUN.test(key) ? '(a long value: not shown)' : JSON.stringify(key.slice(0, 60));
    const quoted = quoteToken(writtenKey(lines[at]!)!);
    return `line ${at + 1} ${quoted.startsWith('(') ? quoted : JSON.stringify(quoted)}`;
  }).join(', ');
  const count = `${keys.size} key${keys.size === 1 ? '' : 's'} that ${keys.size === 1 ? 'is' : 'are'} no fingerprint in any form, so can never match: ${shown}${keys.size > 3 ? ', …' : ''}: `;
  return relay
    ? `relay table ${table} (${t.file}) has ${count}Postfix sends ${digest} fingerprints, in hex or colon hex (was a line cut short, or a character lost?)`
    : `pin table ${table} (${t.file}) has ${count}a pin is the SHA-256 of the public key, in hex, colon hex, base64 or base64url (was a line cut short, or a character lost?): postern pins add <account> <certificate> writes it`;
}

const LONG_RUN = /[A-Za-z0-9+/_-]{32,}/;

/** The key an entry's line starts with, in a Postfix table (`key value`) or a YAML or JSON mapping (`key: value`, `"key": value`). */
function writtenKey(line: string): string | undefined {
  // Unquoted, a key ends at whitespace or at a colon before it (YAML): colon hex keeps its colons.
  const m = /^\s*(?:[{,]\s*)?(?:"([^"]*)"|'([^']*)'|([^\s#"']+?)(?=:?(?:\s|$)))/.exec(line);
  return m ? m[1] ?? m[2] ?? m[3] : undefined;
}
