/**
 * What an administrator needs to know of one certificate to register it anywhere: fingerprints (SHA-256,
 * SHA-1, MD5 in Postfix's colon form), the SPKI pin in mox's base64url and Postfix's colon form, names
 * and validity. Built on the same describe.ts the server uses, so the CLI prints what the server matches.
 */
import { describeCertificate } from '../certificates/index.ts';
import { pemToDer } from '../certificates/digests.ts';
import type { PeerCertificate } from '../sandbox/api/index.ts';

export interface CertificateFacts {
  subject: string;
  issuer: string;
  serial: string;
  notBefore: string;
  notAfter: string;
  keyType: string;
  emails: string[];
  fingerprint: PeerCertificate['fingerprint'];
  pin: PeerCertificate['pin'];
}

export function certificateFacts(pem: string): CertificateFacts {
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('not a PEM certificate');
  const body = pem.slice(pem.indexOf('-----BEGIN CERTIFICATE-----'));
  const d = describeCertificate(pemToDer(body.slice(0, body.indexOf('-----END CERTIFICATE-----') + 25)), { verified: true, errorCode: null });
  return {
    subject: d.subject.dn, issuer: d.issuer.dn, serial: d.serial, notBefore: d.notBefore, notAfter: d.notAfter,
    keyType: d.keyBits ? `${d.keyType}-${d.keyBits}` : d.keyType, emails: [...d.san.email],
    fingerprint: d.fingerprint, pin: d.pin,
  };
}
