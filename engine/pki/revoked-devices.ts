/**
 * The revoked device certificates of the CA folder (`pki.dir`) by their digests, for what sees no serial: a Postfix
 * policy request carries only ccert_fingerprint and ccert_pubkey_fingerprint, and Postfix checks no CRL, so a
 * revoked certificate reaches the policy service as one Postfix verified. Postern issued it and recorded it
 * (issued.json, issued/<serial>.crt), so its digests can be matched against what was revoked. And for the account
 * page, which certificates were revoked as lost or stolen, by whichever means (the page, `postern pki revoke`).
 */
import { X509Certificate, createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pkiPaths } from './layout.ts';
import { readInventory, type DeviceCertificate } from './inventory.ts';
import { readIfExists } from './atomic-file.ts';
import type { Config } from '../config/schema.ts';

export type DigestName = 'sha256' | 'sha1' | 'md5';

export interface RevokedDevices {
  /** Certificate (DER) digests of revoked certificates, lowercase hex, by digest. */
  certificates: Record<DigestName, ReadonlySet<string>>;
  /**
   * Public-key (SubjectPublicKeyInfo) digests of revoked certificates whose key no unrevoked certificate of the
   * CA carries (a renewal with the same key keeps working): a stolen key in a certificate made elsewhere.
   */
  keys: Record<DigestName, ReadonlySet<string>>;
  /** Certificates revoked as lost or stolen (keyCompromise): serial → account (lowercase), for the account page's sessions. */
  compromised: ReadonlyMap<string, string>;
}

export const NO_REVOKED_DEVICES: RevokedDevices = Object.freeze({
  certificates: { sha256: new Set<string>(), sha1: new Set<string>(), md5: new Set<string>() },
  keys: { sha256: new Set<string>(), sha1: new Set<string>(), md5: new Set<string>() },
  compromised: new Map<string, string>(),
});

const DIGESTS: readonly DigestName[] = ['sha256', 'sha1', 'md5'];

/**
 * Read from issued.json and ca.crl (readInventory takes in what the CRL revokes ahead of the inventory); the
 * SHA-1 and MD5 digests (a service whose fingerprintDigest is not sha256) from the issued copies. A folder
 * without an inventory revokes nothing here; an unreadable one throws (the caller's build fails, closed).
 */
export async function readRevokedDevices(dir: string): Promise<RevokedDevices> {
  const paths = pkiPaths(dir);
  const inv = await readInventory(paths);
  const certificates = { sha256: new Set<string>(), sha1: new Set<string>(), md5: new Set<string>() };
  const keys = { sha256: new Set<string>(), sha1: new Set<string>(), md5: new Set<string>() };
  const keptKeys = new Set(inv.certificates.filter((c) => !c.revoked).map((c) => c.pinSha256));
  const revokedSerials = new Set(inv.otherRevoked.map((r) => r.serial));
  const compromised = new Map<string, string>();
  for (const c of inv.certificates) {
    if (!c.revoked) continue;
    if (c.revoked.reason === 'keyCompromise') compromised.set(c.serial, c.identity.toLowerCase());
    certificates.sha256.add(c.fingerprintSha256);
    if (!keptKeys.has(c.pinSha256)) keys.sha256.add(c.pinSha256);
    revokedSerials.add(c.serial);
  }
  for (const serial of revokedSerials) {
    const pem = await readFile(join(paths.issued, `${serial}.crt`), 'utf8').catch(() => null);
    if (pem === null) continue; // a serial revoked by file, or a copy not made: only issued.json's SHA-256 digests then
    const cert = new X509Certificate(pem);
    const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
    const keptKey = keptKeys.has(createHash('sha256').update(spki).digest('hex'));
    for (const d of DIGESTS) {
      certificates[d].add(createHash(d).update(cert.raw).digest('hex'));
      if (!keptKey) keys[d].add(createHash(d).update(spki).digest('hex'));
    }
  }
  return { certificates, keys, compromised };
}

/** Whether a generation reads them (and watches issued.json and ca.crl): pki.dir with policy services or the account page. */
export function readsRevokedDevices(config: Config): config is Config & { pki: { dir: string } } {
  return !!config.pki.dir && (config.policyServices.length > 0 || config.accounts !== undefined);
}

/** Whether a certificate described by its digests (lowercase hex, of `digest`) is a revoked device's. */
export function isRevokedDevice(revoked: RevokedDevices, digest: DigestName, fingerprint: string | null, keyFingerprint: string | null): boolean {
  return (fingerprint !== null && revoked.certificates[digest].has(fingerprint))
    || (keyFingerprint !== null && revoked.keys[digest].has(keyFingerprint));
}

/**
 * The revoked certificate of the CA folder `dir` whose key this is (SHA-256 pin, hex), unless a certificate not revoked
 * carries it too (a renewal): pinning it would take back the revocation (a pin names the account whatever the chain
 * verdict, so the stolen key in a certificate made anywhere would log in). Null when none, or no inventory.
 */
export async function revokedCertificateOfKey(dir: string, pinSha256: string): Promise<DeviceCertificate | null> {
  const paths = pkiPaths(dir);
  if ((await readIfExists(paths.inventory)) === null) return null;
  const certs = (await readInventory(paths)).certificates.filter((c) => c.pinSha256 === pinSha256);
  return certs.some((c) => !c.revoked) ? null : certs.find((c) => c.revoked) ?? null;
}
