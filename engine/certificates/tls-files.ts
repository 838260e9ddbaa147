/**
 * Reading TLS material from disk with errors that name the file: the listener's key pair (the key must
 * match the certificate), CA bundles and CRLs (each CRL must be signed by one of the CAs).
 */
import { readFile } from 'node:fs/promises';
import { X509Certificate, createPublicKey, createPrivateKey } from 'node:crypto';
import { x509 } from './x509-provider.ts';
import { toPem } from './digests.ts';

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
const PEM_CRL = /-----BEGIN (?:X509 )?CRL-----[\s\S]+?-----END (?:X509 )?CRL-----/g;

async function read(file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    throw new Error(`${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

export async function loadKeyPair(certFile: string, keyFile: string): Promise<{ cert: string; key: string }> {
  const cert = (await read(certFile)).toString('utf8');
  const key = (await read(keyFile)).toString('utf8');
  const pems = cert.match(PEM_CERT);
  if (!pems) throw new Error(`${certFile}: no PEM certificate found`);
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(pems[0]!);
  } catch (err) {
    throw new Error(`${certFile}: not a valid certificate: ${(err as Error).message}`);
  }
  let publicFromKey: string;
  try {
    publicFromKey = createPublicKey(createPrivateKey(key)).export({ type: 'spki', format: 'pem' }).toString();
  } catch (err) {
    throw new Error(`${keyFile}: not a valid private key: ${(err as Error).message}`);
  }
  if (publicFromKey !== leaf.publicKey.export({ type: 'spki', format: 'pem' }).toString()) {
    throw new Error(`${keyFile}: private key does not match certificate ${certFile}`);
  }
  return { cert, key };
}

export interface TrustMaterial {
  ca: string[];
  crl: string[];
  warnings: string[];
}

export async function loadTrustMaterial(files: { caFiles: string[]; crlFiles: string[] }): Promise<TrustMaterial> {
  const ca: string[] = [];
  const cas: x509.X509Certificate[] = [];
  for (const file of files.caFiles) {
    const pems = (await read(file)).toString('utf8').match(PEM_CERT);
    if (!pems) throw new Error(`${file}: not a PEM certificate bundle`);
    for (const pem of pems) {
      try {
        cas.push(new x509.X509Certificate(pem));
      } catch (err) {
        throw new Error(`${file}: unreadable certificate: ${(err as Error).message}`);
      }
      ca.push(pem);
    }
  }
  const crl: string[] = [];
  const warnings: string[] = [];
  for (const file of files.crlFiles) {
    const raw = await read(file);
    const text = raw.toString('latin1');
    const blocks = /-----BEGIN (X509 )?CRL-----/.test(text) ? text.match(PEM_CRL)! : [raw];
    for (const block of blocks) {
      let parsed: x509.X509Crl;
      try {
        parsed = new x509.X509Crl(typeof block === 'string' ? Buffer.from(block.replace(/-----[^-]+-----|\s/g, ''), 'base64') : block);
      } catch (err) {
        throw new Error(`${file}: not a CRL (PEM or DER): ${(err as Error).message}`);
      }
      let signed = false;
      for (const issuer of cas) {
        if (issuer.subject === parsed.issuer && await parsed.verify({ publicKey: issuer.publicKey }).catch(() => false)) signed = true;
      }
      if (!signed) throw new Error(`${file}: CRL issued by "${parsed.issuer}" is not signed by any configured CA`);
      if (parsed.nextUpdate && parsed.nextUpdate < new Date()) warnings.push(`${file}: CRL expired on ${parsed.nextUpdate.toISOString()} (certificates of its CA will not verify)`);
      crl.push(toPem(parsed.rawData, 'X509 CRL'));
    }
  }
  return { ca, crl, warnings };
}
