/**
 * What a listener's (or delivery's) certificate file holds when it is not what it should be, said as the mistake
 * that made it: a DER certificate where PEM is read, a private key where the certificate goes (the two files
 * swapped), a chain with the CA before the server's certificate (`cat ca.crt server.crt`). Only the kind of content
 * is named, never any of it (a private key's text stays out of every message: key-material.ts).
 */
import { X509Certificate } from 'node:crypto';
import { containsPrivateKey } from './key-material.ts';

/** Why a certificate file has no PEM certificate block. */
export function notPemCertificate(file: string, raw: Buffer): string {
  if (containsPrivateKey(raw.toString('latin1'))) return 'holds a private key, not a certificate (are the certificate and key files swapped?)';
  try {
    new X509Certificate(raw); // only whether it parses as DER
    return `a DER (binary) certificate, not PEM: convert it with openssl x509 -inform DER -in ${file} -out ${file.replace(/\.(der|cer|crt)$/i, '')}.pem`;
  } catch {
    return 'not a PEM certificate';
  }
}

/**
 * The key matches none of the leaf: if it matches a later certificate of the file, the chain is in the wrong order
 * (TLS clients take the first as the server's), which "does not match" alone does not tell.
 */
export function keyMismatch(certFile: string, certs: readonly string[], publicKeyDer: Buffer): string {
  const subject = (c: X509Certificate): string => c.subject.replace(/\n/g, ', ');
  for (let i = 1; i < certs.length; i++) {
    let cert: X509Certificate;
    try { cert = new X509Certificate(certs[i]!); } catch { continue; }
    if (cert.publicKey.export({ type: 'spki', format: 'der' }).equals(publicKeyDer)) {
      return `private key does not match the first certificate of ${certFile} ("${subject(new X509Certificate(certs[0]!))}") but its certificate ${i + 1} ("${subject(cert)}"): the server's certificate must come first, then the chain (cat server.crt intermediate.crt > fullchain.pem)`;
    }
  }
  return `private key does not match certificate ${certFile}`;
}
