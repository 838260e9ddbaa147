/** Digest encodings used for certificate identities: lowercase hex, Postfix colon hex, base64, base64url. */
import { createHash } from 'node:crypto';

export const hex = (algorithm: string, data: Uint8Array): string => createHash(algorithm).update(data).digest('hex');

/** `5b57fe…` → `5B:57:FE:…` (Postfix tls_digest_encode, `openssl x509 -fingerprint`). */
export const colonHex = (hexDigest: string): string => hexDigest.toUpperCase().match(/../g)!.join(':');

/** PEM with the label OpenSSL expects (`X509 CRL`, not @peculiar/x509's `CRL`). */
export function toPem(der: ArrayBuffer | Uint8Array, label: string): string {
  const b64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString('base64');
  return `-----BEGIN ${label}-----\n${b64.match(/.{1,64}/g)!.join('\n')}\n-----END ${label}-----\n`;
}
