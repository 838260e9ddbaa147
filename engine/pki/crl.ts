/**
 * The CA's CRL, made from the inventory: every revoked certificate, a cRLNumber one above the last, and a
 * nextUpdate `crlDays` ahead. Written atomically over ca.crt's CRL file, which a running server's reload
 * watcher picks up and applies to the next handshakes.
 */
import { createCrl, type Authority } from '../certificates/index.ts';
import { writeFileAtomic } from './atomic-file.ts';
import { REVOCATION_REASONS, type PkiPaths } from './layout.ts';
import type { Inventory } from './inventory.ts';
import { endAfterDays } from './lifetime.ts';

const CLOCK_SKEW_MS = 3600_000;

export interface CrlWritten {
  file: string;
  number: number;
  thisUpdate: string;
  nextUpdate: string;
  revoked: number;
}

/** Signs and writes the CRL; bumps `inv.crlNumber` (the caller writes the inventory after). */
export async function writeCrl(paths: PkiPaths, ca: Authority, inv: Inventory, now = new Date()): Promise<CrlWritten> {
  const revoked = [
    ...inv.certificates.filter((c) => c.revoked).map((c) => ({ serial: c.serial, ...c.revoked! })),
    ...inv.otherRevoked,
  ].map((r) => ({ serial: r.serial, date: new Date(r.at), reason: REVOCATION_REASONS[r.reason] }));
  // An hour back, as the certificates' notBefore (issue.ts): a server whose clock is behind this one's (another
  // node the CRL is copied to) must not see a CRL from the future. It fails every certificate of the CA
  // (CRL_NOT_YET_VALID) until its clock catches up: dated a minute back, a node five minutes behind took the
  // certificates and refused them all for their CRL.
  const thisUpdate = new Date(now.getTime() - CLOCK_SKEW_MS);
  // Never past the CA: OpenSSL would then see a CRL outliving its issuer (nor past any date a CRL can hold).
  const until = endAfterDays(now, inv.crlDays, ca.certificate.notAfter);
  inv.crlNumber += 1;
  const pem = await createCrl(ca, revoked, { thisUpdate, nextUpdate: until, number: inv.crlNumber });
  await writeFileAtomic(paths.crl, pem, 0o644);
  return { file: paths.crl, number: inv.crlNumber, thisUpdate: thisUpdate.toISOString(), nextUpdate: until.toISOString(), revoked: revoked.length };
}
