/**
 * The test PKI, generated once per process with the project's own code (engine/certificates): a CA with
 * a CRL, a server certificate for localhost, clients of every kind the tests need, and a foreign CA.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate, createHash } from 'node:crypto';
import {
  createCertificateAuthority, issueServerCertificate, issueClientCertificate, createSelfSignedCertificate, createCrl,
  loadAuthority, type Authority, type IssuedCertificate,
} from '../../engine/certificates/index.ts';

/** File paths, plus identities computed here with node:crypto (independently of describe.ts) for pin tables. */
export interface TestClient {
  cert: string;
  key: string;
  /** key + cert in one file (curl --cert, Postfix smtp_tls_chain_files). */
  pem: string;
  serial: string;
  /** SHA-256 of the DER certificate: lowercase hex, and Postfix's uppercase colon form. */
  fingerprintSha256: string;
  fingerprintSha256Colon: string;
  fingerprintSha1: string;
  fingerprintSha1Colon: string;
  fingerprintMd5: string;
  /** SHA-256 of the SubjectPublicKeyInfo: lowercase hex, Postfix colon hex, base64, base64url (mox). */
  pinSha256: string;
  pinColon: string;
  pinBase64: string;
  pinBase64Url: string;
}

const CLIENTS = ['alice', 'bob', 'revoked', 'expired', 'selfsigned', 'ed25519', 'ecdsa', 'stranger'] as const;
export type ClientName = typeof CLIENTS[number];

export interface TestPki {
  dir: string;
  ca: { cert: string; key: string };
  /** The CA's CRL; it revokes `revoked` (CN=mallory). */
  crl: string;
  /** Chain file: server certificate + CA. */
  server: { cert: string; key: string };
  /** An unrelated CA that issued `stranger`, with an empty CRL of its own. */
  otherCa: { cert: string; key: string; crl: string };
  clients: Record<ClientName, TestClient>;
  /** In-memory signers, to issue more certificates or CRLs in a test. */
  authorities: { ca: Authority; otherCa: Authority };
}

/** What a TLS client needs to trust the test CA and present `name`'s certificate, as PEM text. */
export async function clientTlsOptions(pki: TestPki, name: ClientName): Promise<{ ca: string; cert: string; key: string }> {
  return {
    ca: await readFile(pki.ca.cert, 'utf8'),
    cert: await readFile(pki.clients[name].cert, 'utf8'),
    key: await readFile(pki.clients[name].key, 'utf8'),
  };
}

const cache = new Map<string, Promise<TestPki>>();

/**
 * The PKI for `dir` (default: a fresh temp dir, removed at exit); generated once per process and dir. Under
 * test/run.ts the default one is generated once for the whole run (POSTERN_TEST_PKI, see sharedTestPki) and each
 * process gets its own copy of it: its keys (two RSA) cost ~0.5 s of CPU a process, in about 140 test files.
 */
export function makeTestPki(dir?: string): Promise<TestPki> {
  const key = dir ?? '';
  let pki = cache.get(key);
  if (!pki) {
    const shared = process.env.POSTERN_TEST_PKI;
    pki = dir === undefined && shared ? copyOfShared(shared) : generate(dir);
    cache.set(key, pki);
  }
  return pki;
}

/** What a shared PKI's folder holds besides its files: the TestPki with paths relative to the folder. */
const MANIFEST = 'test-pki.json';

/** Generates the run's shared PKI into `dir` (test/run.ts, before any test file starts). */
export async function sharedTestPki(dir: string): Promise<void> {
  const pki = await generate(dir);
  const relative = (path: string): string => path.slice(dir.length + 1);
  const { authorities: _, ...files } = pki;
  writeFileSync(join(dir, MANIFEST), JSON.stringify(files, (k, v: unknown) => typeof v === 'string' && v.startsWith(`${dir}/`) ? relative(v) : k === 'dir' ? '' : v));
}

/** A private copy of the shared PKI (tests write into pki.dir), removed at exit, with its authorities loaded. */
async function copyOfShared(shared: string): Promise<TestPki> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-pki-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  cpSync(shared, dir, { recursive: true });
  const paths = new Set(['cert', 'key', 'pem', 'crl']);
  const pki = JSON.parse(readFileSync(join(dir, MANIFEST), 'utf8'), (k, v: unknown) => typeof v === 'string' && paths.has(k) ? join(dir, v) : v) as TestPki;
  rmSync(join(dir, MANIFEST));
  pki.dir = dir;
  const text = (path: string): string => readFileSync(path, 'utf8');
  const [ca, otherCa] = await Promise.all([loadAuthority(text(pki.ca.cert), text(pki.ca.key)), loadAuthority(text(pki.otherCa.cert), text(pki.otherCa.key))]);
  pki.authorities = { ca, otherCa };
  return pki;
}

const colon = (hex: string): string => hex.toUpperCase().match(/../g)!.join(':');

async function generate(into: string | undefined): Promise<TestPki> {
  const dir = into ?? await mkdtemp(join(tmpdir(), 'postern-pki-'));
  if (into) await mkdir(into, { recursive: true });
  else process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  // Key generation runs on the libuv pool: issue in parallel.
  const [ca, other] = await Promise.all([
    createCertificateAuthority({ commonName: 'Postern Test CA', organization: 'Postern Test' }),
    createCertificateAuthority({ commonName: 'Other CA', keyType: 'ecdsa' }),
  ]);
  const [server, alice, bob, revoked, expired, selfsigned, ed25519, ecdsa, stranger] = await Promise.all([
    issueServerCertificate(ca, { commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], keyType: 'ecdsa' }),
    issueClientCertificate(ca, { commonName: 'alice', organization: 'Example', emailAddress: 'alice@example.com', sanEmails: ['alice@example.com'] }),
    issueClientCertificate(ca, { commonName: 'bob', sanEmails: ['bob@example.com'], emailAddress: 'bob@example.com', keyType: 'ecdsa' }),
    issueClientCertificate(ca, { commonName: 'mallory', emailAddress: 'mallory@example.com', keyType: 'ecdsa' }),
    issueClientCertificate(ca, {
      commonName: 'old-laptop', emailAddress: 'old@example.com', keyType: 'ecdsa',
      notBefore: new Date('2020-01-01T00:00:00Z'), notAfter: new Date('2021-01-01T00:00:00Z'),
    }),
    createSelfSignedCertificate({ commonName: 'eve', keyType: 'ed25519' }),
    issueClientCertificate(ca, { commonName: 'ed-device', emailAddress: 'ed@example.com', keyType: 'ed25519' }),
    issueClientCertificate(ca, { commonName: 'ec-device', emailAddress: 'ec@example.com', keyType: 'ecdsa' }),
    // Same emailAddress as alice: a foreign CA must never make it alice.
    issueClientCertificate(other, { commonName: 'stranger', emailAddress: 'alice@example.com', keyType: 'ecdsa' }),
  ]);
  const issued: Record<ClientName, IssuedCertificate> = { alice, bob, revoked, expired, selfsigned, ed25519, ecdsa, stranger };
  const file = async (name: string, text: string): Promise<string> => {
    const path = join(dir, name);
    await writeFile(path, text, { mode: 0o600 });
    return path;
  };
  const pki: TestPki = {
    dir,
    ca: { cert: await file('ca.crt', ca.cert), key: await file('ca.key', ca.key) },
    crl: await file('ca.crl', await createCrl(ca, [revoked], { nextUpdate: new Date(Date.now() + 365 * 86400_000) })),
    server: { cert: await file('server.crt', server.cert + ca.cert), key: await file('server.key', server.key) },
    otherCa: {
      cert: await file('other-ca.crt', other.cert), key: await file('other-ca.key', other.key),
      crl: await file('other-ca.crl', await createCrl(other, [], { nextUpdate: new Date(Date.now() + 365 * 86400_000) })),
    },
    clients: {} as Record<ClientName, TestClient>,
    authorities: { ca, otherCa: other },
  };
  for (const name of CLIENTS) {
    const c = issued[name];
    const x = new X509Certificate(c.cert);
    const spki = createHash('sha256').update(x.publicKey.export({ type: 'spki', format: 'der' })).digest();
    const digest = (alg: string): string => createHash(alg).update(x.raw).digest('hex');
    pki.clients[name] = {
      cert: await file(`${name}.crt`, c.cert),
      key: await file(`${name}.key`, c.key),
      pem: await file(`${name}.pem`, c.key + c.cert),
      serial: c.serial,
      fingerprintSha256: digest('sha256'),
      fingerprintSha256Colon: colon(digest('sha256')),
      fingerprintSha1: digest('sha1'),
      fingerprintSha1Colon: colon(digest('sha1')),
      fingerprintMd5: digest('md5'),
      pinSha256: spki.toString('hex'),
      pinColon: colon(spki.toString('hex')),
      pinBase64: spki.toString('base64'),
      pinBase64Url: spki.toString('base64url'),
    };
  }
  return pki;
}
