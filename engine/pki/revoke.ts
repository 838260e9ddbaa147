/**
 * Revoking device certificates: by serial, by certificate (PEM), or by identity and device. The inventory
 * marks them and the CRL is rewritten (new number, new nextUpdate); a running server's reload applies it
 * to the next handshakes, and a session already logged in with one is refused at its next MAIL FROM.
 */
import { X509Certificate } from 'node:crypto';
import { resolve } from 'node:path';
import { withFolderLock, type WhenLocked } from './atomic-file.ts';
import { pkiPaths, type RevocationReason } from './layout.ts';
import { openCa } from './ca.ts';
import { normalizeSerial, readInventory, writeInventory, type DeviceCertificate } from './inventory.ts';
import { writeCrl, type CrlWritten } from './crl.ts';

export type RevokeSelector =
  | { serial: string }
  | { certificatePem: string }
  | { identity: string; device?: string };

export interface RevokeOptions {
  /** Default `unspecified`; `keyCompromise` for a lost or stolen device. */
  reason?: RevocationReason;
  /** With `identity` and no device: revoke all of its certificates (else more than one is an error). */
  all?: boolean;
  /** Once the CA folder's lock is held: throws to revoke nothing (see WhenLocked). */
  whenLocked?: WhenLocked;
}

export interface RevokeResult {
  /** The inventory's certificates revoked by this call. */
  revoked: DeviceCertificate[];
  /** Already revoked before: nothing changed for them. */
  alreadyRevoked: DeviceCertificate[];
  /** A serial (or certificate) this CA folder has no record of, revoked all the same. */
  unrecorded: string | null;
  crl: CrlWritten | null;
}

export async function revokeDevice(dir: string, selector: RevokeSelector, opts: RevokeOptions = {}): Promise<RevokeResult> {
  const paths = pkiPaths(resolve(dir));
  const reason = opts.reason ?? 'unspecified';
  return withFolderLock(paths.dir, async () => {
    const ca = await openCa(paths);
    const inv = await readInventory(paths);
    let matches: DeviceCertificate[];
    let unrecorded: string | null = null;
    if ('identity' in selector) {
      const id = selector.identity.toLowerCase();
      matches = inv.certificates.filter((c) => c.identity.toLowerCase() === id && (selector.device === undefined || c.device === selector.device));
      if (!matches.length) throw new Error(`no certificate of ${selector.identity}${selector.device ? ` for device ${selector.device}` : ''} in ${paths.inventory}`);
      const live = matches.filter((c) => !c.revoked);
      const devices = new Set(live.map((c) => c.device));
      if (selector.device === undefined && devices.size > 1 && !opts.all) {
        throw new Error(`${selector.identity} has certificates for several devices (${[...devices].join(', ')}): name one with --device, or revoke all with --all`);
      }
    } else {
      let serial: string;
      if ('serial' in selector) {
        serial = normalizeSerial(selector.serial);
      } else {
        const cert = new X509Certificate(selector.certificatePem);
        if (!cert.checkIssued(new X509Certificate(ca.cert)) || !cert.verify(new X509Certificate(ca.cert).publicKey)) {
          throw new Error(`that certificate ("${cert.subject.replace(/\n/g, ', ')}") was not issued by this CA (${paths.caCert}); its CRL cannot revoke it`);
        }
        serial = normalizeSerial(cert.serialNumber);
      }
      matches = inv.certificates.filter((c) => c.serial === serial);
      if (!matches.length) {
        if (!inv.otherRevoked.some((r) => r.serial === serial)) {
          inv.otherRevoked.push({ serial, at: new Date().toISOString(), reason });
          unrecorded = serial;
        } else {
          return { revoked: [], alreadyRevoked: [], unrecorded: serial, crl: null };
        }
      }
    }
    const now = new Date().toISOString();
    const revoked: DeviceCertificate[] = [];
    const alreadyRevoked: DeviceCertificate[] = [];
    for (const c of matches) {
      if (c.revoked) alreadyRevoked.push(c);
      else {
        c.revoked = { at: now, reason };
        revoked.push(c);
      }
    }
    if (!revoked.length && !unrecorded) return { revoked, alreadyRevoked, unrecorded, crl: null };
    const crl = await writeCrl(paths, ca, inv);
    await writeInventory(paths, inv);
    return { revoked, alreadyRevoked, unrecorded, crl };
  }, opts.whenLocked);
}

/** Re-signs the CRL without a change (its nextUpdate moves on): `postern pki crl`, from a timer. */
export async function refreshCrl(dir: string): Promise<CrlWritten> {
  const paths = pkiPaths(resolve(dir));
  return withFolderLock(paths.dir, async () => {
    const ca = await openCa(paths);
    const inv = await readInventory(paths);
    const crl = await writeCrl(paths, ca, inv);
    await writeInventory(paths, inv);
    return crl;
  });
}
