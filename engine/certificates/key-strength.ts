/**
 * Whether a public key is strong enough to be trusted on its own, as a pin is: 112-bit security, OpenSSL's
 * security level 2, the level at which Node 24 verifies a client's chain. A pin accepts whatever the chain
 * verdict, so it also bypasses the chain check that refuses a weaker key (EE_KEY_TOO_SMALL): without this,
 * a pinned 1024-bit RSA key (factorable by a well-funded attacker) or 512-bit one (factorable in hours on
 * rented machines) would log its pinned account in for whoever factors it.
 */
import { readCertificate } from './x509-fields.ts';

/** Smallest RSA (and DSA) modulus at 112-bit security. */
export const MIN_RSA_BITS = 2048;
/** Smallest elliptic curve at 112-bit security (P-224; P-256 in practice). */
export const MIN_EC_BITS = 224;

/** `keyType` and `keyBits` as the certificate facts give them (x509-fields.ts). */
export function strongEnoughKey(key: { keyType: string; keyBits: number }): boolean {
  switch (key.keyType) {
    case 'rsa': case 'rsa-pss': case 'dsa': return key.keyBits >= MIN_RSA_BITS;
    case 'ec': return key.keyBits >= MIN_EC_BITS;
    case 'ed25519': case 'ed448': return true;
    // An unknown algorithm or curve: nothing says it is strong.
    default: return false;
  }
}

/**
 * Node names no code for OpenSSL's EE_KEY_TOO_SMALL (nor for a weak digest or an unknown critical
 * extension): it reports `UNSPECIFIED`. A leaf whose key is below the bar is the common case (an old
 * device's RSA-1024 key), so say so; anything else stays `UNSPECIFIED`.
 */
export function explainUnspecified(errorCode: string | null, der: Buffer): string | null {
  if (errorCode !== 'UNSPECIFIED') return errorCode;
  try {
    return strongEnoughKey(readCertificate(der)) ? errorCode : 'EE_KEY_TOO_SMALL';
  } catch {
    return errorCode; // unreadable: describePeerCertificate reports it
  }
}
