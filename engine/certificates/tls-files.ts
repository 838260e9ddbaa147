/**
 * Reads TLS material from disk with errors that start with the file's path: the listener's key pair (the
 * key must match the certificate), CA bundles and CRLs (each CRL must be signed by one of the CAs).
 */
import { readInputFile, readProblem } from '../config/input-file.ts';
import { X509Certificate, createPrivateKey, createPublicKey, verify as cryptoVerify } from 'node:crypto';
import { x509 } from './x509-provider.ts';
import { children, readTlv } from './der.ts';
import { pemBlocks, pemBlocksAt, pemToDer, toPem } from './digests.ts';
import { publicRootOf } from './public-roots.ts';
import { encryptedKeyProblem } from './key-material.ts';
import { keyMismatch, notPemCertificate } from './key-pair-mistakes.ts';
import { slicer } from '../config/give-way.ts';
import { resolve } from 'node:path';

/**
 * The most certificates one CA bundle is read with: a private CA's bundle holds a few, the system bundle some 150.
 * Each is parsed in JavaScript (about a millisecond): read in one stretch, a bundle of a thousand held the event
 * loop of every process for seconds at a reload, past the workers' watchdog, which killed them with their
 * connections; a file of certificates concatenated by mistake (256 MB: 200,000 of them) would take minutes even
 * read giving way. Refused, with the file named, before any is parsed.
 */
export const MAX_BUNDLE_CERTIFICATES = 1000;

/** PEM strings for tls.createSecureContext's `ca` and `crl`, plus what is worth a log line. */
export interface TrustMaterial {
  ca: string[];
  crl: string[];
  /** Each starts with the file's path, e.g. an expired CRL. */
  warnings: string[];
}

const message = (err: unknown): string => (err as Error).message;

/** Which setting a file was named by: the certificate, the key, a CA bundle or a CRL. */
export type TlsFileRole = 'cert' | 'key' | 'ca' | 'crl';

/**
 * A TLS file that cannot be used. The message starts with the file's path; `file` and `role` let the caller
 * name the configuration key (and its line) that points at it.
 */
export class TlsFileError extends Error {
  readonly file: string;
  readonly role: TlsFileRole;
  constructor(file: string, role: TlsFileRole, problem: string) {
    super(`${file}: ${problem}`);
    this.name = 'TlsFileError';
    this.file = file;
    this.role = role;
  }
}

async function read(file: string, role: TlsFileRole): Promise<Buffer> {
  try {
    return await readInputFile(file);
  } catch (err) {
    throw new TlsFileError(file, role, `cannot read: ${readProblem(err)}`);
  }
}

/**
 * The listener's certificate (chain) and private key. Returns only the CERTIFICATE blocks of the
 * certificate file, so a combined key+cert file works without the key riding along as "cert".
 */
export async function loadKeyPair(certFile: string, keyFile: string): Promise<{ cert: string; key: string }> {
  const raw = await read(certFile, 'cert');
  const blocks = pemBlocksAt(raw.toString('utf8'), ['CERTIFICATE']);
  if (!blocks.length) throw new TlsFileError(certFile, 'cert', notPemCertificate(certFile, raw));
  // Every block, the chain's too, as OpenSSL reads it when the listener starts: a chain certificate it cannot read
  // (a line lost in a copy of fullchain.pem) passed here, and each process then failed to start with it.
  const [leaf] = blocks.map((b, i) => opensslCertificate(certFile, 'cert', b, i, blocks.length));
  const certs = blocks.map((b) => b.pem);
  const key = (await read(keyFile, 'key')).toString('utf8');
  let fromKey: Buffer;
  try {
    fromKey = createPublicKey(createPrivateKey(key)).export({ type: 'spki', format: 'der' });
  } catch (err) {
    throw new TlsFileError(keyFile, 'key', encryptedKeyProblem(key) ?? `not a usable private key: ${message(err)}`);
  }
  if (!fromKey.equals(leaf.publicKey.export({ type: 'spki', format: 'der' }))) {
    throw new TlsFileError(keyFile, 'key', keyMismatch(certFile, certs, fromKey));
  }
  return { cert: certs.join(''), key };
}

/**
 * CA bundles (PEM) and CRLs (PEM or DER), checked; a CRL must be signed by one of the CAs. `forClients`: the
 * CAs a listener verifies client certificates against, where a public CA is refused (public-roots.ts); a
 * next hop's CA (delivery) may well be public.
 *
 * `pkiCrl`: the CRL of the CA `postern pki` manages (pki.dir's ca.crl), rewritten at each revocation (the command's,
 * the account page's). A CRL of `crlFiles` signed by that CA which lacks some of its revocations is a published copy
 * not republished yet: it is served as `pkiCrl` instead (with a warning naming the copy and what it lacks), so what
 * was revoked is refused at once, and the listener keeps serving meanwhile.
 */
export async function loadTrustMaterial(files: { caFiles: readonly string[]; crlFiles: readonly string[]; forClients?: boolean; pkiCrl?: string }): Promise<TrustMaterial> {
  const ca: string[] = [];
  const authorities: x509.X509Certificate[] = [];
  const warnings: string[] = [];
  const now = new Date();
  const giveWay = slicer(1);
  for (const file of files.caFiles) {
    const blocks = pemBlocksAt((await read(file, 'ca')).toString('utf8'), ['CERTIFICATE']);
    if (!blocks.length) throw new TlsFileError(file, 'ca', 'not a PEM certificate');
    if (blocks.length > MAX_BUNDLE_CERTIFICATES) throw new TlsFileError(file, 'ca', `holds ${blocks.length} certificates, more than the ${MAX_BUNDLE_CERTIFICATES} a CA bundle is read with: list only the CAs that issue the certificates to verify`);
    for (const [i, block] of blocks.entries()) {
      const pem = block.pem;
      // Each certificate is a parse of its own: the sessions of the process get their turn between them.
      const turn = giveWay();
      if (turn) await turn;
      // As OpenSSL reads it for the listener (a CA it cannot read would be left out there, silently).
      opensslCertificate(file, 'ca', block, i, blocks.length);
      let cert: x509.X509Certificate;
      try {
        cert = new x509.X509Certificate(pemToDer(pem));
      } catch (err) {
        throw new TlsFileError(file, 'ca', `${which(block, i, blocks.length)}unreadable certificate: ${message(err)}`);
      }
      const publicRoot = files.forClients ? publicRootOf(new X509Certificate(pemToDer(pem))) : null;
      if (publicRoot !== null) {
        throw new TlsFileError(file, 'ca', `"${cert.subject}" is a public CA (the root "${publicRoot}" of Mozilla's store, or issued by it): every certificate it issues, to anyone who asks, would verify as a client's (relay, certificate identity, AUTH EXTERNAL); list only the CA that issues your clients' certificates (not the system bundle)`);
      }
      if (cert.notAfter < now) warnings.push(`${file}: CA "${cert.subject}" expired on ${cert.notAfter.toISOString()}`);
      if (!cert.getExtension(x509.BasicConstraintsExtension)?.ca) warnings.push(`${file}: "${cert.subject}" is not a CA certificate`);
      authorities.push(cert);
      ca.push(pem);
    }
  }
  const crl: string[] = [];
  const own = await pkiCrlOf(files, authorities);
  for (const file of files.crlFiles) {
    for (const copy of await readCrls(file)) {
      const signer = await signedByOneOf(copy, authorities);
      if (!signer) {
        throw new TlsFileError(file, 'crl', `CRL issued by "${copy.issuer}" is not signed by any configured CA`);
      }
      const lacking = own && sameKey(own.signer, signer) ? revokedSerials(own.crl).filter((s) => !revokedSerials(copy).includes(s)) : [];
      if (lacking.length) warnings.push(`${file}: older than the CA's own CRL ${files.pkiCrl} (issued ${copy.thisUpdate.toISOString()}, the CA's on ${own!.crl.thisUpdate.toISOString()}): it lacks the revocation of ${listed(lacking)}; served with ${files.pkiCrl} in its place (they are refused) until the copy is republished`);
      const parsed = lacking.length ? own!.crl : copy;
      if (parsed.nextUpdate && parsed.nextUpdate < now) {
        warnings.push(`${file}: CRL expired on ${parsed.nextUpdate.toISOString()}; every certificate of "${parsed.issuer}" fails with CRL_HAS_EXPIRED`);
      }
      if (parsed.thisUpdate > now) {
        warnings.push(`${file}: CRL issued on ${parsed.thisUpdate.toISOString()}, after this server's clock (${now.toISOString()}: behind the clock that signed it?); every certificate of "${parsed.issuer}" fails with CRL_NOT_YET_VALID until then`);
      }
      // OpenSSL wants the `X509 CRL` label; a DER file is re-framed as PEM.
      crl.push(toPem(parsed.rawData, 'X509 CRL'));
    }
  }
  return { ca, crl, warnings };
}

/** The CRLs of a file: PEM (`X509 CRL` or `CRL` blocks, several per file) or DER. */
async function readCrls(file: string): Promise<x509.X509Crl[]> {
  const raw = await read(file, 'crl');
  const text = raw.toString('latin1');
  // Served re-framed from the DER read here (see toPem): what OpenSSL gets is what this read.
  const pems = pemBlocks(text, ['X509 CRL', 'CRL']);
  if (!pems.length && text.includes('-----BEGIN')) throw new TlsFileError(file, 'crl', 'not a PEM CRL');
  return (pems.length ? pems.map(pemToDer) : [raw]).map((der) => {
    try {
      return new x509.X509Crl(der);
    } catch (err) {
      throw new TlsFileError(file, 'crl', `not a CRL (PEM or DER): ${message(err)}`);
    }
  });
}

/** `certificate 2 of 3 (line 31): `: which certificate of a file a problem is about; nothing for a file of one. */
function which(block: { line: number }, index: number, count: number): string {
  return count > 1 ? `certificate ${index + 1} of ${count} (line ${block.line}): ` : '';
}

/** A certificate block read by OpenSSL, as the listener's TLS reads it (a stricter reader of PEM than a base64 decode). */
function opensslCertificate(file: string, role: TlsFileRole, block: { pem: string; line: number }, index: number, count: number): X509Certificate {
  try {
    return new X509Certificate(block.pem);
  } catch (err) {
    throw new TlsFileError(file, role, `${which(block, index, count)}unreadable certificate: ${message(err)}`);
  }
}

/** When each CRL of a file runs out: its issuer and its nextUpdate (null when it names none). */
export async function crlDeadlines(file: string): Promise<Array<{ issuer: string; nextUpdate: Date | null }>> {
  return (await readCrls(file)).map((c) => ({ issuer: c.issuer, nextUpdate: c.nextUpdate ?? null }));
}

/** pki.dir's CRL and the CA that signed it, when a CA of the listener's did and crlFiles do not name it; else null. */
async function pkiCrlOf(files: { crlFiles: readonly string[]; pkiCrl?: string }, authorities: readonly x509.X509Certificate[]): Promise<{ crl: x509.X509Crl; signer: x509.X509Certificate } | null> {
  if (!files.pkiCrl || files.crlFiles.some((f) => resolve(f) === resolve(files.pkiCrl!))) return null;
  // Unreadable or not of these CAs: the crl-coverage check of the generation build says what is wrong.
  const [crl] = await readCrls(files.pkiCrl).catch(() => []);
  const signer = crl ? await signedByOneOf(crl, authorities) : null;
  return crl && signer ? { crl, signer } : null;
}

/** The serials a CRL revokes, lower-case hex without leading zero bytes (as `postern pki list` writes them). */
function revokedSerials(crl: x509.X509Crl): string[] {
  return crl.entries.map((e) => e.serialNumber.toLowerCase().replace(/^(00)+(?=.)/, ''));
}

/** `serials` for a log line: the first ten, and how many more. */
function listed(serials: readonly string[]): string {
  const shown = serials.slice(0, 10).join(', ');
  const more = serials.length > 10 ? ` and ${serials.length - 10} more` : '';
  return `${serials.length} certificate${serials.length === 1 ? '' : 's'} (serial ${shown}${more})`;
}

/** One CA (a bundle may list it twice, or in two files). */
const sameKey = (a: x509.X509Certificate, b: x509.X509Certificate): boolean =>
  a.subject === b.subject && Buffer.from(a.publicKey.rawData).equals(Buffer.from(b.publicKey.rawData));

/** The CA of `authorities` that signed `crl`, or null. */
async function signedByOneOf(crl: x509.X509Crl, authorities: readonly x509.X509Certificate[]): Promise<x509.X509Certificate | null> {
  for (const ca of authorities) {
    if (ca.subject !== crl.issuer) continue;
    if (await crl.verify({ publicKey: ca.publicKey }).catch(() => false)) return ca;
    // @peculiar/x509 cannot check every algorithm (Ed448): let OpenSSL decide.
    try {
      const key = createPublicKey({ key: Buffer.from(ca.publicKey.rawData), format: 'der', type: 'spki' });
      const der = Buffer.from(crl.rawData);
      const [tbs, , signature] = children(der, readTlv(der, 0, der.length));
      if (tbs && signature && cryptoVerify(null, der.subarray(tbs.start, tbs.end), key, der.subarray(signature.body + 1, signature.end))) return ca;
    } catch { /* not verifiable this way either */ }
  }
  return null;
}
