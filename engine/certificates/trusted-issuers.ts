/**
 * A listener's CA certificates, to explain a verdict OpenSSL reports only as "unable to get CRL": with
 * a CRL configured, OpenSSL asks for the CRL before it gives up on a foreign or self-signed certificate.
 */
import { X509Certificate } from 'node:crypto';

export class TrustedIssuers {
  readonly #cas: X509Certificate[];

  constructor(caPems: readonly string[]) {
    this.#cas = caPems.map((pem) => new X509Certificate(pem));
  }

  /** The code to report for a certificate whose CRL check failed (authorizationError UNABLE_TO_GET_CRL). */
  explainMissingCrl(der: Uint8Array): string {
    const leaf = new X509Certificate(der);
    // A configured CA really signed it: the CRL of that CA is what is missing.
    if (this.#cas.some((ca) => leaf.checkIssued(ca) && leaf.verify(ca.publicKey))) return 'UNABLE_TO_GET_CRL';
    // By name and signature: checkIssued(leaf) would demand keyCertSign, which a self-signed leaf lacks.
    if (leaf.subject === leaf.issuer && leaf.verify(leaf.publicKey)) return 'DEPTH_ZERO_SELF_SIGNED_CERT';
    return this.#cas.some((ca) => leaf.checkIssued(ca)) ? 'CERT_SIGNATURE_FAILURE' : 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY';
  }
}
