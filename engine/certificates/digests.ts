/** Encodings shared by the certificate modules: digests (hex, Postfix colon hex) and PEM framing. */
import { createHash } from 'node:crypto';

export const hex = (algorithm: string, data: Uint8Array): string => createHash(algorithm).update(data).digest('hex');

/** `5b57fe…` → `5B:57:FE:…` (Postfix tls_digest_encode, `openssl x509 -fingerprint`). */
export function colonHex(hexDigest: string): string {
  const upper = hexDigest.toUpperCase();
  let out = upper.slice(0, 2);
  for (let i = 2; i < upper.length; i += 2) out += ':' + upper.slice(i, i + 2);
  return out;
}

/** PEM with the given label; CRLs need `X509 CRL` (OpenSSL's label, not @peculiar/x509's `CRL`). */
export function toPem(der: ArrayBuffer | Uint8Array, label: string): string {
  const b64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString('base64');
  let body = '';
  for (let i = 0; i < b64.length; i += 64) body += b64.slice(i, i + 64) + '\n';
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
}

/** Every PEM block with one of the labels, in file order, as text. */
export function pemBlocks(text: string, labels: readonly string[]): string[] {
  return pemBlocksAt(text, labels).map((b) => b.pem);
}

/** Every PEM block with one of the labels, in file order, with the line its BEGIN is on (from 1). */
export function pemBlocksAt(text: string, labels: readonly string[]): Array<{ pem: string; line: number }> {
  const re = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]+?-----END \1-----/g;
  const out: Array<{ pem: string; line: number }> = [];
  let line = 1;
  let at = 0;
  for (const m of text.matchAll(re)) {
    if (!labels.includes(m[1]!)) continue;
    for (let i = text.indexOf('\n', at); i !== -1 && i < m.index; i = text.indexOf('\n', i + 1)) line++;
    at = m.index;
    out.push({ pem: m[0] + '\n', line });
  }
  return out;
}

/** The DER inside one PEM block. */
export const pemToDer = (pem: string): Buffer => Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
