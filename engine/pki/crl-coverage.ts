/**
 * Listeners that trust the CA `postern pki` manages but do not load the CRL it rewrites on each revocation:
 * there a revoked certificate (a lost laptop, revoked by the command or the account page) still verifies,
 * so it still logs in, relays and names its account. A copy of ca.crt elsewhere trusts the same
 * certificates, so CAs are compared by content. A copy of ca.crl (published to /etc/postern, fetched from the CA's
 * web server) loads it too: one the CA signed is taken for one, and when it lacks a later revocation the listener is
 * served ca.crl in its place (loadTrustMaterial's pkiCrl), with a warning naming the copy.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Config } from '../config/schema.ts';
import { pemBlocks, pemToDer } from '../certificates/digests.ts';
import { x509 } from '../certificates/x509-provider.ts';
import { pkiPaths } from './layout.ts';
import { readInventory } from './inventory.ts';

export interface UnloadedCrl {
  /** Index in `config.listeners`. */
  listener: number;
  name: string;
  /** The CRL `postern pki revoke` writes. */
  crl: string;
  /** Certificates it revokes now (0: none yet; a revocation would still have no effect there). */
  revoked: number;
}

/** Whether `file` holds a CRL that `ca` signed (a copy of its CRL, of any age); unreadable: no. */
const holdsCrlOf = async (file: string, ca: x509.X509Certificate): Promise<boolean> => {
  try {
    const raw = await readFile(file);
    const text = raw.toString('latin1');
    const pems = pemBlocks(text, ['X509 CRL', 'CRL']);
    for (const der of pems.length ? pems.map(pemToDer) : [raw]) {
      const crl = new x509.X509Crl(der);
      if (crl.issuer === ca.subject && await crl.verify({ publicKey: ca.publicKey }).catch(() => false)) return true;
    }
  } catch { /* unreadable or not a CRL: the listener's own load reports it */ }
  return false;
};

/** The files of `crlFiles` that hold a CRL `ca` signed (copies of its CRL). */
async function crlCopiesIn(crlFiles: readonly string[], ca: x509.X509Certificate): Promise<string[]> {
  const holds = await Promise.all(crlFiles.map((f) => holdsCrlOf(f, ca)));
  return crlFiles.filter((_, i) => holds[i]);
}

/**
 * The listeners that load a copy of the CRL of the CA of the folder `dir` (not its ca.crl itself), and the copies:
 * right after a revocation each lacks it until republished (a running server serves ca.crl in its place).
 */
export async function crlCopies(config: Config, dir: string): Promise<Array<{ name: string; files: string[] }>> {
  const paths = pkiPaths(dir);
  const [ca] = await certificatesIn(paths.caCert);
  if (!ca) return [];
  const caCert = new x509.X509Certificate(ca);
  const out: Array<{ name: string; files: string[] }> = [];
  for (const l of config.listeners) {
    if (l.tls.mode === 'none' || l.tls.clientCertificates === 'none') continue;
    if (l.tls.crlFiles.some((f) => resolve(f) === resolve(paths.crl))) continue;
    const files = await crlCopiesIn(l.tls.crlFiles, caCert);
    if (files.length) out.push({ name: l.name, files });
  }
  return out;
}

const certificatesIn = async (file: string): Promise<Buffer[]> => {
  try {
    return pemBlocks(await readFile(file, 'utf8'), ['CERTIFICATE']).map(pemToDer);
  } catch {
    return []; // unreadable: the listener's own load reports it
  }
};

/** The listeners that trust the CA of the folder `dir` without loading its CRL. */
export async function unloadedCrls(config: Config, dir: string): Promise<UnloadedCrl[]> {
  const paths = pkiPaths(dir);
  const [ca] = await certificatesIn(paths.caCert);
  if (!ca) return [];
  const out: UnloadedCrl[] = [];
  let revoked: number | undefined;
  let caCert: x509.X509Certificate | undefined;
  for (const [i, l] of config.listeners.entries()) {
    if (l.tls.mode === 'none' || l.tls.clientCertificates === 'none') continue;
    if (l.tls.crlFiles.some((f) => resolve(f) === resolve(paths.crl))) continue;
    const trusts = (await Promise.all(l.tls.caFiles.map(certificatesIn))).some((certs) => certs.some((c) => c.equals(ca)));
    if (!trusts) continue;
    caCert ??= new x509.X509Certificate(ca);
    if ((await crlCopiesIn(l.tls.crlFiles, caCert)).length) continue;
    revoked ??= await readInventory(paths).then((inv) => inv.certificates.filter((c) => c.revoked).length + inv.otherRevoked.length, () => 0);
    out.push({ listener: i, name: l.name, crl: paths.crl, revoked });
  }
  return out;
}
