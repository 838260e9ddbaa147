/**
 * Keys of the certificates the page itself revoked, refused by the page from that moment. The page otherwise judges
 * a certificate by the CRL of the generation in force, which a reload brings in after the revocation: after its
 * debounce at least, and not at all while reloads are refused (an administrator's half-edited users file or
 * script). Meanwhile a certificate revoked as lost or stolen signed in again right after "Your account is signed
 * out everywhere else", and issued itself a new certificate that outlived the revocation.
 *
 * By key (the SHA-256 pin): the key of a revoked certificate is dead for good (the page refuses to register it
 * again), so an entry never needs to go, and it holds for the certificate however it names the account (field or pin).
 */
export class RevokedHere {
  readonly #pins = new Set<string>();

  /** The certificate with this key (SHA-256 of its SubjectPublicKeyInfo, hex) was revoked on the page. */
  add(pinSha256: string): void {
    this.#pins.add(pinSha256.toLowerCase());
  }

  has(pinSha256: string | null | undefined): boolean {
    return !!pinSha256 && this.#pins.has(pinSha256.toLowerCase());
  }
}
