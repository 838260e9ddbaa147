/** The CA certificates of a listener, to explain a verdict OpenSSL reports only as "unable to get CRL". */
import { X509Certificate } from 'node:crypto';

export class TrustedIssuers {
  readonly #cas: X509Certificate[];

  constructor(caPems: readonly string[]) {
    this.#cas = caPems.map((pem) => new X509Certificate(pem));
  }

  /** The code to report for a certificate whose CRL check failed. */
  explainMissingCrl(der: Uint8Array): string {
    const leaf = new X509Certificate(der);
    if (this.#cas.some((ca) => leaf.checkIssued(ca))) return 'UNABLE_TO_GET_CRL';
    return leaf.checkIssued(leaf) ? 'DEPTH_ZERO_SELF_SIGNED_CERT' : 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY';
  }
}
