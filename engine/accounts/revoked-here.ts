/**
 * Keys the page itself took back: certificates it revoked, and keys of the devices' own it removed as lost or
 * stolen, refused by the page from that moment. The page otherwise judges a certificate by the CRL and pin table of
 * the generation in force, which a reload brings in after the change: after its debounce at least, and not at all
 * while reloads are refused (an administrator's half-edited users file or script). Meanwhile a certificate revoked
 * as lost or stolen signed in again right after "Your account is signed out everywhere else", and issued itself a
 * new certificate that outlived the revocation.
 *
 * By key (the SHA-256 pin), so it holds for the certificate however it names the account (field or pin). The key of
 * a revoked certificate is dead for good (the page refuses to register it again); a key removed as stolen goes from
 * here when the page registers it again.
 */
export class RevokedHere {
  readonly #pins = new Set<string>();

  /** The key (SHA-256 of its SubjectPublicKeyInfo, hex) was taken back on the page. */
  add(pinSha256: string): void {
    this.#pins.add(pinSha256.toLowerCase());
  }

  /** Registered again on the page: its owner has it back. */
  forget(pinSha256: string): void {
    this.#pins.delete(pinSha256.toLowerCase());
  }

  has(pinSha256: string | null | undefined): boolean {
    return !!pinSha256 && this.#pins.has(pinSha256.toLowerCase());
  }
}
