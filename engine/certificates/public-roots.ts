/**
 * Is a CA one of the public web PKI's? Node ships Mozilla's root store (tls.rootCertificates); a client CA
 * that is one of those roots, or a CA one of them signed (a public intermediate), issues certificates to
 * anyone who asks, so "verified against caFiles" would then mean "anyone": relay permission, an account from
 * a certificate field and AUTH EXTERNAL to every holder of a web certificate.
 */
import { X509Certificate } from 'node:crypto';
import { rootCertificates } from 'node:tls';

let roots: readonly X509Certificate[] | null = null;
/** Parsed once, on the first CA checked (about 150 certificates, a few milliseconds). */
const publicRoots = (): readonly X509Certificate[] => (roots ??= rootCertificates.map((pem) => new X509Certificate(pem)));

/** The subject of the public root that is `ca` or signed it; null for a CA outside Mozilla's store. */
export function publicRootOf(ca: X509Certificate): string | null {
  for (const root of publicRoots()) {
    // A re-issued root (same name and key, other dates) is the same authority; so is the issuer of an intermediate.
    if (root.raw.equals(ca.raw) || (ca.checkIssued(root) && signedBy(ca, root))) return root.subject.split('\n').join(', ');
  }
  return null;
}

/** A signature OpenSSL cannot check (an algorithm it lacks) is no signature by that root. */
function signedBy(ca: X509Certificate, root: X509Certificate): boolean {
  try {
    return ca.verify(root.publicKey);
  } catch {
    return false;
  }
}
