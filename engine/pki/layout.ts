/**
 * The files of a Postern CA folder (`postern pki init --dir DIR`), and the key types and revocation
 * reasons the commands accept. The development PKI (data/pki) has the same ca.crt/ca.key/ca.crl names,
 * so the commands work on it too.
 */
import { join } from 'node:path';
import type { KeyType } from '../certificates/index.ts';

export interface PkiPaths {
  dir: string;
  /** The CA certificate: the listener's `tls.caFiles`. */
  caCert: string;
  /** The CA's private key (0600; read only to sign). */
  caKey: string;
  /** The CA's CRL: the listener's `tls.crlFiles`, rewritten on every revocation. */
  crl: string;
  /** Every certificate issued, with its revocation (inventory.ts). */
  inventory: string;
  /** A copy of each issued certificate, `<serial>.crt`. */
  issued: string;
}

export function pkiPaths(dir: string): PkiPaths {
  return {
    dir,
    caCert: join(dir, 'ca.crt'),
    caKey: join(dir, 'ca.key'),
    crl: join(dir, 'ca.crl'),
    inventory: join(dir, 'issued.json'),
    issued: join(dir, 'issued'),
  };
}

/** The key types offered: what mail clients import (RSA everywhere, ECDSA P-256 nearly; Ed25519 where TLS 1.3 is). */
export const KEY_TYPES = ['ecdsa-p256', 'ed25519', 'rsa-3072'] as const;
export type DeviceKeyType = typeof KEY_TYPES[number];

export function keyTypeOptions(type: DeviceKeyType): { keyType: KeyType; rsaBits?: number } {
  if (type === 'rsa-3072') return { keyType: 'rsa', rsaBits: 3072 };
  return { keyType: type === 'ed25519' ? 'ed25519' : 'ecdsa' };
}

export function parseKeyType(text: string): DeviceKeyType {
  if ((KEY_TYPES as readonly string[]).includes(text)) return text as DeviceKeyType;
  throw new Error(`unknown key type "${text}": one of ${KEY_TYPES.join(', ')}`);
}

/**
 * RFC 5280 CRLReason names, as `--reason` takes them, with their codes (§5.3.1; the X.509 library's enum has the
 * same values). Numbers here, not the library's enum: the folder's layout is read by processes that never sign
 * a CRL (the supervisor watching it), which then need not load the library.
 */
export const REVOCATION_REASONS = {
  unspecified: 0,
  keyCompromise: 1,
  cACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  privilegeWithdrawn: 9,
} as const;
export type RevocationReason = keyof typeof REVOCATION_REASONS;

export function parseReason(text: string): RevocationReason {
  if (text in REVOCATION_REASONS) return text as RevocationReason;
  throw new Error(`unknown revocation reason "${text}": one of ${Object.keys(REVOCATION_REASONS).join(', ')}`);
}
