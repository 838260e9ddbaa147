/**
 * Generates X.509 material (CA, CRL, server and client certificates) with @peculiar/x509 and WebCrypto.
 * Used for the development PKI of `npm start` and by the tests; keys are written mode 0600.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { webcrypto as wc } from 'node:crypto';
import { x509, webcrypto } from './x509-provider.ts';
import { toPem } from './digests.ts';

type CryptoKeyPair = wc.CryptoKeyPair;
type CryptoKey = wc.CryptoKey;
type Algorithm = wc.Algorithm;
type RsaHashedKeyGenParams = wc.RsaHashedKeyGenParams;
type RsaHashedImportParams = wc.RsaHashedImportParams;
type EcKeyGenParams = wc.EcKeyGenParams;

export type KeyType = 'rsa' | 'ecdsa' | 'ed25519';

export interface IssuedCertificate {
  cert: string;
  key: string;
  serial: string;
}

export interface Authority extends IssuedCertificate {
  certificate: x509.X509Certificate;
  keys: CryptoKeyPair;
  keyType: KeyType;
}

const subtle = webcrypto.subtle;

function keyAlgorithm(type: KeyType): RsaHashedKeyGenParams | EcKeyGenParams | Algorithm {
  if (type === 'rsa') return { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 } as RsaHashedKeyGenParams;
  if (type === 'ecdsa') return { name: 'ECDSA', namedCurve: 'P-256' } as EcKeyGenParams;
  return { name: 'Ed25519' };
}

function signingAlgorithm(type: KeyType): Algorithm {
  if (type === 'rsa') return { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as Algorithm;
  if (type === 'ecdsa') return { name: 'ECDSA', hash: 'SHA-256' } as Algorithm;
  return { name: 'Ed25519' };
}

async function generateKeys(type: KeyType): Promise<CryptoKeyPair> {
  return await subtle.generateKey(keyAlgorithm(type) as RsaHashedKeyGenParams, true, ['sign', 'verify']) as CryptoKeyPair;
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').match(/.{1,64}/g)!.join('\n')}\n-----END PRIVATE KEY-----\n`;
}

function serialNumber(): string {
  const bytes = randomBytes(12);
  bytes[0] = bytes[0]! & 0x7f | 0x10; // positive, no leading zero byte
  return bytes.toString('hex');
}

export interface SubjectOptions {
  commonName: string;
  organization?: string;
  organizationalUnit?: string;
  emailAddress?: string;
}

function subjectName(s: SubjectOptions): x509.Name {
  const rdns: Array<Record<string, string[]>> = [];
  if (s.organization) rdns.push({ O: [s.organization] });
  if (s.organizationalUnit) rdns.push({ OU: [s.organizationalUnit] });
  rdns.push({ CN: [s.commonName] });
  if (s.emailAddress) rdns.push({ E: [s.emailAddress] });
  return new x509.Name(rdns);
}

const YEAR = 365 * 24 * 3600 * 1000;

export async function createCertificateAuthority(opts: SubjectOptions & { keyType?: KeyType; years?: number }): Promise<Authority> {
  const keyType = opts.keyType ?? 'rsa';
  const keys = await generateKeys(keyType);
  const serial = serialNumber();
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial,
    name: subjectName(opts),
    notBefore: new Date(Date.now() - 3600_000),
    notAfter: new Date(Date.now() + (opts.years ?? 10) * YEAR),
    signingAlgorithm: signingAlgorithm(keyType),
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert: certificate.toString('pem') + '\n', key: await privateKeyPem(keys.privateKey), serial, certificate, keys, keyType };
}

export interface LeafOptions extends SubjectOptions {
  keyType?: KeyType;
  notBefore?: Date;
  notAfter?: Date;
  dnsNames?: string[];
  ipAddresses?: string[];
  sanEmails?: string[];
}

async function issue(ca: Authority, opts: LeafOptions, usage: 'server' | 'client'): Promise<IssuedCertificate> {
  const keys = await generateKeys(opts.keyType ?? 'rsa');
  const serial = serialNumber();
  const names = [
    ...(opts.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(opts.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value })),
    ...(opts.sanEmails ?? []).map((value) => ({ type: 'email' as const, value })),
  ];
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | (usage === 'server' && opts.keyType !== 'ed25519' && opts.keyType !== 'ecdsa' ? x509.KeyUsageFlags.keyEncipherment : 0), true),
    new x509.ExtendedKeyUsageExtension([usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(ca.keys.publicKey),
  ];
  if (names.length) extensions.push(new x509.SubjectAlternativeNameExtension(names));
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject: subjectName(opts),
    issuer: ca.certificate.subjectName,
    notBefore: opts.notBefore ?? new Date(Date.now() - 3600_000),
    notAfter: opts.notAfter ?? new Date(Date.now() + 2 * YEAR),
    signingAlgorithm: signingAlgorithm(ca.keyType),
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    extensions,
  });
  return { cert: certificate.toString('pem') + '\n', key: await privateKeyPem(keys.privateKey), serial };
}

export function issueServerCertificate(ca: Authority, opts: LeafOptions): Promise<IssuedCertificate> {
  return issue(ca, opts, 'server');
}

export function issueClientCertificate(ca: Authority, opts: LeafOptions): Promise<IssuedCertificate> {
  return issue(ca, opts, 'client');
}

/** A self-signed client certificate, as mox's `tlspubkey gen` or a device makes for itself. */
export async function createSelfSignedCertificate(opts: LeafOptions): Promise<IssuedCertificate> {
  const own = await createCertificateAuthority({ ...opts, keyType: opts.keyType ?? 'ed25519', years: 2 });
  return { cert: own.cert, key: own.key, serial: own.serial };
}

export async function createCrl(ca: Authority, revoked: Array<{ serial: string; reason?: x509.X509CrlReason }>, opts: { nextUpdateDays?: number } = {}): Promise<string> {
  const crl = await x509.X509CrlGenerator.create({
    issuer: ca.certificate.subjectName,
    thisUpdate: new Date(Date.now() - 60_000),
    nextUpdate: new Date(Date.now() + (opts.nextUpdateDays ?? 365) * 24 * 3600_000),
    entries: revoked.map((r) => ({ serialNumber: r.serial, revocationDate: new Date(Date.now() - 60_000), reason: r.reason ?? x509.X509CrlReason.keyCompromise })),
    signingAlgorithm: signingAlgorithm(ca.keyType),
    signingKey: ca.keys.privateKey,
    extensions: [await x509.AuthorityKeyIdentifierExtension.create(ca.keys.publicKey)],
  });
  return toPem(crl.rawData, 'X509 CRL');
}

/** Reconstructs an Authority from its PEM files (to sign more certificates or a new CRL). */
export async function loadAuthority(certPem: string, keyPem: string): Promise<Authority> {
  const certificate = new x509.X509Certificate(certPem);
  const alg = certificate.publicKey.algorithm as { name: string };
  const keyType: KeyType = alg.name === 'Ed25519' ? 'ed25519' : alg.name === 'ECDSA' ? 'ecdsa' : 'rsa';
  const der = Buffer.from(keyPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const privateKey = await subtle.importKey('pkcs8', der, keyAlgorithm(keyType) as RsaHashedImportParams, true, ['sign']);
  const publicKey = await certificate.publicKey.export(keyAlgorithm(keyType) as RsaHashedImportParams, ['verify']);
  return { cert: certPem, key: keyPem, serial: certificate.serialNumber, certificate, keys: { privateKey, publicKey }, keyType };
}

/** PKCS#12 for mail clients (Thunderbird, macOS Mail) via the openssl CLI; false if openssl is missing. */
export async function exportPkcs12(certFile: string, keyFile: string, caFile: string, password: string, outFile: string): Promise<boolean> {
  try {
    await promisify(execFile)('openssl', ['pkcs12', '-export', '-in', certFile, '-inkey', keyFile, '-certfile', caFile,
      '-out', outFile, '-passout', `pass:${password}`, '-name', 'postern client certificate']);
    await chmod(outFile, 0o600);
    return true;
  } catch {
    return false;
  }
}

export interface DevelopmentPki {
  ca: string;
  caKey: string;
  crl: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  clientPem: string;
  clientP12: string | null;
}

const exists = (p: string): Promise<boolean> => access(p).then(() => true, () => false);

/** The development PKI `npm start` uses: created once, reused on later starts. */
export async function writeDevelopmentPki(dir: string, opts: { hostname: string; demoUser: { name: string; email: string } }): Promise<DevelopmentPki> {
  const p: DevelopmentPki = {
    ca: join(dir, 'ca.crt'), caKey: join(dir, 'ca.key'), crl: join(dir, 'ca.crl'),
    serverCert: join(dir, 'server.crt'), serverKey: join(dir, 'server.key'),
    clientCert: join(dir, `${opts.demoUser.name}.crt`), clientKey: join(dir, `${opts.demoUser.name}.key`),
    clientPem: join(dir, `${opts.demoUser.name}.pem`), clientP12: join(dir, `${opts.demoUser.name}.p12`),
  };
  if (await exists(p.ca) && await exists(p.clientPem)) {
    if (!await exists(p.clientP12!)) p.clientP12 = null;
    return p;
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const ca = await createCertificateAuthority({ commonName: 'Postern Development CA', organization: 'Postern' });
  const server = await issueServerCertificate(ca, {
    commonName: 'localhost', dnsNames: [...new Set(['localhost', opts.hostname])], ipAddresses: ['127.0.0.1', '::1'], keyType: 'ecdsa',
  });
  const client = await issueClientCertificate(ca, {
    commonName: opts.demoUser.name, organization: 'Postern', emailAddress: opts.demoUser.email, sanEmails: [opts.demoUser.email], keyType: 'ecdsa',
  });
  const writeSecret = (file: string, text: string): Promise<void> => writeFile(file, text, { mode: 0o600 });
  await writeFile(p.ca, ca.cert);
  await writeSecret(p.caKey, ca.key);
  await writeFile(p.crl, await createCrl(ca, []));
  await writeFile(p.serverCert, server.cert + ca.cert);
  await writeSecret(p.serverKey, server.key);
  await writeFile(p.clientCert, client.cert);
  await writeSecret(p.clientKey, client.key);
  await writeSecret(p.clientPem, client.key + client.cert);
  if (!await exportPkcs12(p.clientCert, p.clientKey, p.ca, 'postern', p.clientP12!)) p.clientP12 = null;
  return p;
}
