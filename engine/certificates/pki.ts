/**
 * Generates X.509 material (CAs, CRLs, server and client certificates) with @peculiar/x509 and WebCrypto.
 * Used by the development PKI of `npm start` (dev-pki.ts) and by the tests. Everything comes back as PEM.
 */
import { randomBytes } from 'node:crypto';
import type { webcrypto as wc } from 'node:crypto';
import { x509, webcrypto } from './x509-provider.ts';
import { pemToDer, toPem } from './digests.ts';

type CryptoKeyPair = wc.CryptoKeyPair;
type CryptoKey = wc.CryptoKey;
type Algorithm = wc.Algorithm;

export type KeyType = 'rsa' | 'ecdsa' | 'ed25519';

export interface IssuedCertificate {
  /** Certificate PEM. */
  cert: string;
  /** PKCS#8 private key PEM. */
  key: string;
  /** Serial number, lowercase hex. */
  serial: string;
}

/** A CA that can sign: its PEMs plus the parsed certificate and the WebCrypto keys. */
export interface Authority extends IssuedCertificate {
  certificate: x509.X509Certificate;
  keys: CryptoKeyPair;
  keyType: KeyType;
}

export interface SubjectOptions {
  commonName: string;
  organization?: string;
  organizationalUnit?: string;
  country?: string;
  /** PKCS#9 emailAddress subject attribute (not a SAN; see `sanEmails`). */
  emailAddress?: string;
  /**
   * The whole subject instead of the fields above, RDN by RDN in DER order, e.g. `[{ CN: ['a'] }, { CN: ['b'] }]`
   * (several values in one RDN: a multi-valued RDN). For certificates a CA should never sign, in tests.
   */
  rdns?: Array<Record<string, string[]>>;
}

export interface LeafOptions extends SubjectOptions {
  /** Default `rsa` (2048 bits, see rsaBits); `ecdsa` is P-256. */
  keyType?: KeyType;
  /** RSA modulus length; default 2048. */
  rsaBits?: number;
  /** Default: one hour ago (tolerates clock skew). */
  notBefore?: Date;
  /** Default: two years after notBefore. */
  notAfter?: Date;
  dnsNames?: string[];
  ipAddresses?: string[];
  sanEmails?: string[];
}

export interface AuthorityOptions extends SubjectOptions {
  keyType?: KeyType;
  /** RSA modulus length; default 2048. */
  rsaBits?: number;
  notBefore?: Date;
  notAfter?: Date;
  /** Lifetime when notAfter is not given; default 10. */
  years?: number;
  /** Sign with this CA instead of self-signing: an intermediate CA. */
  issuer?: Authority;
}

/** A CRL entry: a serial in hex, a certificate PEM, or anything carrying a serial (an IssuedCertificate). */
export type Revocation = string | { serial: string; reason?: x509.X509CrlReason; date?: Date };

export interface CrlOptions {
  /** Default: one minute ago. */
  thisUpdate?: Date;
  /** Default: 30 days after thisUpdate. A CRL past nextUpdate fails every chain of its CA (CRL_HAS_EXPIRED). */
  nextUpdate?: Date;
  /** cRLNumber; default the current Unix time, so a reissued CRL numbers higher. */
  number?: number;
}

const subtle = webcrypto.subtle;
const HOUR = 3600_000;
const DAY = 24 * HOUR;
const YEAR = 365 * DAY;

function keyAlgorithm(type: KeyType, namedCurve = 'P-256', rsaBits = 2048): Algorithm {
  if (type === 'rsa') return { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', publicExponent: new Uint8Array([1, 0, 1]), modulusLength: rsaBits } as Algorithm;
  if (type === 'ecdsa') return { name: 'ECDSA', namedCurve } as Algorithm;
  return { name: 'Ed25519' };
}

function signingAlgorithm(type: KeyType): Algorithm {
  if (type === 'rsa') return { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as Algorithm;
  if (type === 'ecdsa') return { name: 'ECDSA', hash: 'SHA-256' } as Algorithm;
  return { name: 'Ed25519' };
}

async function generateKeys(type: KeyType, rsaBits?: number): Promise<CryptoKeyPair> {
  return await subtle.generateKey(keyAlgorithm(type, undefined, rsaBits) as wc.RsaHashedKeyGenParams, true, ['sign', 'verify']) as CryptoKeyPair;
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  return toPem(await subtle.exportKey('pkcs8', key), 'PRIVATE KEY');
}

/** 12 random bytes, positive, without a leading zero byte (RFC 5280 §4.1.2.2: at most 20 octets). */
function serialNumber(): string {
  const bytes = randomBytes(12);
  bytes[0] = (bytes[0]! & 0x7f) | 0x10;
  return bytes.toString('hex');
}

function subjectName(s: SubjectOptions): x509.Name {
  if (s.rdns) return new x509.Name(s.rdns);
  // DER order is least specific first; RFC 4514 strings print it reversed (CN first).
  const rdns: Array<Record<string, string[]>> = [];
  if (s.country) rdns.push({ C: [s.country] });
  if (s.organization) rdns.push({ O: [s.organization] });
  if (s.organizationalUnit) rdns.push({ OU: [s.organizationalUnit] });
  rdns.push({ CN: [s.commonName] });
  if (s.emailAddress) rdns.push({ E: [s.emailAddress] });
  return new x509.Name(rdns);
}

interface Signer {
  name: x509.Name;
  keys: CryptoKeyPair;
  keyType: KeyType;
}

/** Builds and signs one certificate; `issuer` null means self-signed with the subject's own keys. */
async function sign(
  subject: SubjectOptions & { notBefore?: Date; notAfter?: Date }, keys: CryptoKeyPair, keyType: KeyType,
  issuer: Signer | null, defaultLifetime: number, extensions: x509.Extension[],
): Promise<{ certificate: x509.X509Certificate; serial: string }> {
  const signer = issuer ?? { name: subjectName(subject), keys, keyType };
  const serial = serialNumber();
  const notBefore = subject.notBefore ?? new Date(Date.now() - HOUR);
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject: subjectName(subject),
    issuer: signer.name,
    notBefore,
    notAfter: subject.notAfter ?? new Date(notBefore.getTime() + defaultLifetime),
    signingAlgorithm: signingAlgorithm(signer.keyType),
    publicKey: keys.publicKey,
    signingKey: signer.keys.privateKey,
    extensions: [
      ...extensions,
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(signer.keys.publicKey),
    ],
  });
  return { certificate, serial };
}

function subjectAltNames(opts: LeafOptions): x509.Extension[] {
  const names = [
    ...(opts.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(opts.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value })),
    ...(opts.sanEmails ?? []).map((value) => ({ type: 'email' as const, value })),
  ];
  return names.length ? [new x509.SubjectAlternativeNameExtension(names)] : [];
}

const pemOf = (c: x509.X509Certificate): string => toPem(c.rawData, 'CERTIFICATE');

/** A root CA (or, with `issuer`, an intermediate): CA:true, keyCertSign + cRLSign, SKI/AKI. */
export async function createCertificateAuthority(opts: AuthorityOptions): Promise<Authority> {
  const keyType = opts.keyType ?? 'rsa';
  const keys = await generateKeys(keyType, opts.rsaBits);
  const issuer = opts.issuer ? { name: opts.issuer.certificate.subjectName, keys: opts.issuer.keys, keyType: opts.issuer.keyType } : null;
  const { certificate, serial } = await sign(opts, keys, keyType, issuer, (opts.years ?? 10) * YEAR, [
    new x509.BasicConstraintsExtension(true, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
  ]);
  return { cert: pemOf(certificate), key: await privateKeyPem(keys.privateKey), serial, certificate, keys, keyType };
}

async function issueLeaf(ca: Authority | null, opts: LeafOptions, usage: 'server' | 'client'): Promise<IssuedCertificate> {
  const keyType = opts.keyType ?? 'rsa';
  const keys = await generateKeys(keyType, opts.rsaBits);
  // keyEncipherment only means something for RSA key transport (TLS 1.2 RSA kx); clients only sign.
  const keyUsage = x509.KeyUsageFlags.digitalSignature | (usage === 'server' && keyType === 'rsa' ? x509.KeyUsageFlags.keyEncipherment : 0);
  const issuer = ca ? { name: ca.certificate.subjectName, keys: ca.keys, keyType: ca.keyType } : null;
  const { certificate, serial } = await sign(opts, keys, keyType, issuer, 2 * YEAR, [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(keyUsage, true),
    new x509.ExtendedKeyUsageExtension([usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
    ...subjectAltNames(opts),
  ]);
  return { cert: pemOf(certificate), key: await privateKeyPem(keys.privateKey), serial };
}

/** TLS server certificate: EKU serverAuth, SAN DNS names and IP addresses. */
export function issueServerCertificate(ca: Authority, opts: LeafOptions): Promise<IssuedCertificate> {
  return issueLeaf(ca, opts, 'server');
}

/** TLS client certificate: EKU clientAuth, keyUsage digitalSignature, optional SAN emails. */
export function issueClientCertificate(ca: Authority, opts: LeafOptions): Promise<IssuedCertificate> {
  return issueLeaf(ca, opts, 'client');
}

/**
 * A self-signed client certificate, as a device or mox's `tlspubkey gen` makes for itself: a leaf
 * (CA:false, clientAuth) signed by its own key. Default key type ed25519.
 */
export function createSelfSignedCertificate(opts: LeafOptions): Promise<IssuedCertificate> {
  return issueLeaf(null, { ...opts, keyType: opts.keyType ?? 'ed25519' }, 'client');
}

/** RFC 5280 cRLNumber (2.5.29.20): a non-negative DER INTEGER. */
function crlNumberExtension(n: number): x509.Extension {
  let h = Math.max(0, Math.floor(n)).toString(16);
  if (h.length % 2) h = '0' + h;
  if (parseInt(h.slice(0, 2), 16) > 0x7f) h = '00' + h;
  const body = Buffer.from(h, 'hex');
  return new x509.Extension('2.5.29.20', false, Buffer.concat([Buffer.from([0x02, body.length]), body]));
}

function revokedSerial(r: Revocation): string {
  if (typeof r !== 'string') return r.serial;
  return r.includes('-----BEGIN') ? new x509.X509Certificate(pemToDer(r)).serialNumber : r.toLowerCase();
}

/** A CRL signed by `ca`, listing the revoked serials (empty: a valid "nothing revoked" CRL). PEM `X509 CRL`. */
export async function createCrl(ca: Authority, revoked: readonly Revocation[] = [], opts: CrlOptions = {}): Promise<string> {
  // An hour back, as certificates are dated: a verifier whose clock is behind must not see a CRL from the future.
  const thisUpdate = opts.thisUpdate ?? new Date(Date.now() - 3600_000);
  const crl = await x509.X509CrlGenerator.create({
    issuer: ca.certificate.subjectName,
    thisUpdate,
    nextUpdate: opts.nextUpdate ?? new Date(thisUpdate.getTime() + 30 * DAY),
    entries: revoked.map((r) => ({
      serialNumber: revokedSerial(r),
      revocationDate: (typeof r === 'object' && r.date) || thisUpdate,
      reason: typeof r === 'object' && r.reason !== undefined ? r.reason : x509.X509CrlReason.keyCompromise,
    })),
    signingAlgorithm: signingAlgorithm(ca.keyType),
    signingKey: ca.keys.privateKey,
    extensions: [
      await x509.AuthorityKeyIdentifierExtension.create(ca.keys.publicKey),
      crlNumberExtension(opts.number ?? Date.now() / 1000),
    ],
  });
  return toPem(crl.rawData, 'X509 CRL');
}

/** Reconstructs an Authority from its PEMs, to sign more certificates or a new CRL. */
export async function loadAuthority(certPem: string, keyPem: string): Promise<Authority> {
  const certificate = new x509.X509Certificate(pemToDer(certPem));
  const alg = certificate.publicKey.algorithm as { name: string; namedCurve?: string };
  const keyType: KeyType = alg.name === 'Ed25519' ? 'ed25519' : alg.name === 'ECDSA' ? 'ecdsa' : 'rsa';
  const algorithm = keyAlgorithm(keyType, alg.namedCurve) as wc.RsaHashedImportParams;
  const privateKey = await subtle.importKey('pkcs8', pemToDer(keyPem), algorithm, true, ['sign']);
  const publicKey = await certificate.publicKey.export(algorithm, ['verify']);
  return { cert: certPem, key: keyPem, serial: certificate.serialNumber, certificate, keys: { privateKey, publicKey }, keyType };
}
