/**
 * What the page itself took back, refused by the page from that moment: certificates it revoked, and the keys of
 * devices lost or stolen (a certificate revoked so, a key of the device's own removed so). The page otherwise judges
 * a certificate by the CRL and pin table of the generation in force, which a reload brings in after the change:
 * after its debounce at least, and not at all while reloads are refused (an administrator's half-edited users file
 * or script). Meanwhile a certificate revoked as lost or stolen signed in again right after "Your account is signed
 * out everywhere else", and issued itself a new certificate that outlived the revocation.
 *
 * A certificate revoked as no longer used or replaced is refused by its fingerprint only: another certificate with
 * the same key is left to the CRL and pins in force, as before. A stolen key is refused in any certificate (as
 * `postern pins` refuses to pin it), until the account that lost it registers it again on the page. Another account's
 * registration of it forgets nothing: a key is public (sent in TLS handshakes), and the pin table in force still names
 * the account that lost it, so the thief registering it on an account of their own signed in as the victim again.
 */
interface Certificate { fingerprint: { sha256: string }; pin: { sha256: string } }

export class RevokedHere {
  readonly #certificates = new Set<string>();
  /** Stolen keys (pin hex) and the account each was taken back from (lower case). */
  readonly #keys = new Map<string, string>();

  /** The certificate of this SHA-256 fingerprint (hex) was revoked on the page. */
  revoked(fingerprintSha256: string): void {
    this.#certificates.add(fingerprintSha256.toLowerCase());
  }

  /** The key (SHA-256 of its SubjectPublicKeyInfo, hex) was taken back on the page by `identity` as lost or stolen. */
  stolen(pinSha256: string, identity: string): void {
    this.#keys.set(pinSha256.toLowerCase(), identity.toLowerCase());
  }

  /** Registered on the page by `identity`: the account that lost it has it back; any other's registration changes nothing. */
  registered(pinSha256: string, identity: string): void {
    const pin = pinSha256.toLowerCase();
    if (this.#keys.get(pin) === identity.toLowerCase()) this.#keys.delete(pin);
  }

  refuses(c: Certificate | null | undefined): boolean {
    return !!c && (this.#certificates.has(c.fingerprint.sha256.toLowerCase()) || this.#keys.has(c.pin.sha256.toLowerCase()));
  }
}
