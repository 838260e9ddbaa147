/**
 * The CA folder's record of what it issued (`issued.json`): one entry per certificate with its identity,
 * device, validity, fingerprint, pin and revocation, and the CRL's running number. `pki list` reads it;
 * issue and revoke rewrite it (atomically, under the folder lock); crl.ts makes the CRL from it.
 */
import { X509Certificate } from 'node:crypto';
import { pkiPaths, REVOCATION_REASONS, type PkiPaths, type RevocationReason } from './layout.ts';
import { readIfExists, writeFileAtomic } from './atomic-file.ts';
// Loaded when a CRL is read: the supervisor imports this folder to watch it, and never reads one.
import type { x509 } from '../certificates/x509-provider.ts';
import { pemToDer } from '../certificates/digests.ts';

export interface Revoked {
  /** ISO 8601. */
  at: string;
  reason: RevocationReason;
}

export interface DeviceCertificate {
  /** Lowercase hex, as `openssl x509 -serial` prints it (and as `pki revoke SERIAL` takes it). */
  serial: string;
  identity: string;
  device: string;
  /** RFC 4514 subject. */
  subject: string;
  /** Subject alternative name e-mail addresses. */
  emails: string[];
  keyType: string;
  notBefore: string;
  notAfter: string;
  issuedAt: string;
  /** SHA-256 of the certificate (DER), lowercase hex: what the server's sightings are keyed by. */
  fingerprintSha256: string;
  /** SHA-256 of the SubjectPublicKeyInfo, lowercase hex: the pin. */
  pinSha256: string;
  revoked: Revoked | null;
}

export interface Inventory {
  version: 1;
  /** The cRLNumber of the CRL last written (each new CRL numbers one higher). */
  crlNumber: number;
  /** Lifetime of each CRL written (its nextUpdate); a CRL past it fails every certificate of the CA. */
  crlDays: number;
  certificates: DeviceCertificate[];
  /** Revoked serials this inventory never issued (a CRL that predates it, a certificate revoked by file). */
  otherRevoked: Array<{ serial: string } & Revoked>;
}

export const DEFAULT_CRL_DAYS = 365;

/**
 * The inventory of a CA folder, with every revocation its CRL lists: a command is killed (or the power goes)
 * between writing the CRL and writing the inventory, so the CRL may be a step ahead; what it revokes stays
 * revoked, and its number is never handed out again. A folder without an inventory (the development PKI)
 * starts with its CRL's entries.
 */
export async function readInventory(dirOrPaths: string | PkiPaths): Promise<Inventory> {
  const paths = typeof dirOrPaths === 'string' ? pkiPaths(dirOrPaths) : dirOrPaths;
  const text = await readIfExists(paths.inventory);
  const crlText = await readIfExists(paths.crl);
  let crl: x509.X509Crl | null = null;
  try {
    crl = crlText === null ? null : new (await import('../certificates/x509-provider.ts')).x509.X509Crl(pemToDer(crlText));
  } catch (err) {
    // With an inventory, the next change writes the CRL anew from it; without one there is nothing to go by.
    if (text === null) throw new Error(`${paths.crl}: unreadable CRL (${(err as Error).message}), and no ${paths.inventory} to make it again from`);
  }
  let inv: Inventory;
  if (text !== null) {
    try {
      inv = JSON.parse(text) as Inventory;
    } catch (err) {
      throw new Error(`${paths.inventory}: unreadable: ${(err as Error).message}`);
    }
    const version: unknown = (inv as { version?: unknown } | null)?.version;
    // An administrator going back a release: say so, rather than call the file damaged (it is left as it is).
    if (typeof version === 'number' && version > 1) {
      throw new Error(`${paths.inventory}: version ${version}, written by a newer release of Postern (this release reads version 1); left as it is`);
    }
    if (version !== 1 || !Array.isArray(inv.certificates)) throw new Error(`${paths.inventory}: unreadable: not a version 1 inventory`);
    inv.otherRevoked ??= [];
  } else {
    inv = { version: 1, crlNumber: 0, crlDays: DEFAULT_CRL_DAYS, certificates: [], otherRevoked: [] };
  }
  if (crl) takeCrlRevocations(inv, crl);
  return inv;
}

/** Adds the CRL's revocations the inventory lacks, and its number when it is ahead. */
function takeCrlRevocations(inv: Inventory, crl: x509.X509Crl): void {
  inv.crlNumber = Math.max(inv.crlNumber, crlNumberOf(crl));
  for (const e of crl.entries) {
    const serial = normalizeSerial(e.serialNumber);
    const revoked: Revoked = { at: e.revocationDate.toISOString(), reason: reasonName(e.reason) };
    const issued = inv.certificates.find((c) => c.serial === serial);
    if (issued) issued.revoked ??= revoked;
    else if (!inv.otherRevoked.some((r) => r.serial === serial)) inv.otherRevoked.push({ serial, ...revoked });
  }
}

function reasonName(code: x509.X509CrlReason | undefined): RevocationReason {
  const name = Object.entries(REVOCATION_REASONS).find(([, c]) => c === code)?.[0];
  return (name ?? 'unspecified') as RevocationReason;
}

export async function writeInventory(paths: PkiPaths, inv: Inventory): Promise<void> {
  // Group-readable, as the CRL: the server (the folder's group in a root-owned CA folder) matches a policy service's
  // certificates against its revocations (revoked-devices.ts). It holds no key.
  await writeFileAtomic(paths.inventory, `${JSON.stringify(inv, null, 2)}\n`, 0o640);
}

/** Serials compared as written by OpenSSL: lowercase hex without leading zero bytes. */
export function normalizeSerial(text: string): string {
  const h = text.trim().toLowerCase().replace(/^0x/, '').replace(/:/g, '');
  if (!/^[0-9a-f]+$/.test(h)) throw new Error(`not a serial number (hex): "${text}"`);
  return h.replace(/^(00)+(?=.)/, '');
}

/** The cRLNumber extension's value, 0 when absent. */
export function crlNumberOf(crl: x509.X509Crl): number {
  const ext = crl.extensions.find((e) => e.type === '2.5.29.20');
  if (!ext) return 0;
  const v = Buffer.from(ext.value); // INTEGER: 02 len bytes…
  return v[0] === 0x02 ? Number(BigInt(`0x${v.subarray(2, 2 + v[1]!).toString('hex') || '0'}`)) : 0;
}

/** The entry of a certificate (PEM) in the inventory, by serial, when this CA issued it. */
export function findByCertificate(inv: Inventory, pem: string): DeviceCertificate | undefined {
  const serial = normalizeSerial(new X509Certificate(pem).serialNumber);
  return inv.certificates.find((c) => c.serial === serial);
}
