/**
 * The test PKI, generated once per process with the project's own code (engine/certificates): a CA with
 * a CRL, a server certificate for localhost, and clients of every kind the tests need.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate, createHash } from 'node:crypto';
import {
  createCertificateAuthority, issueServerCertificate, issueClientCertificate, createSelfSignedCertificate, createCrl,
  type IssuedCertificate,
} from '../../engine/certificates/index.ts';

export interface TestClient {
  cert: string;
  key: string;
  /** key + cert in one file (curl --cert, Postfix smtp_tls_chain_files). */
  pem: string;
  serial: string;
  /** Lowercase hex SHA-256 of the DER certificate. */
  fingerprintSha256: string;
  fingerprintSha1: string;
  fingerprintMd5: string;
  /** Lowercase hex SHA-256 of the SubjectPublicKeyInfo, and its other spellings. */
  pinSha256: string;
  pinColon: string;
  pinBase64Url: string;
}

const CLIENTS = ['alice', 'bob', 'revoked', 'expired', 'selfsigned', 'ed25519', 'ecdsa', 'stranger'] as const;
export type ClientName = typeof CLIENTS[number];

export interface TestPki {
  dir: string;
  ca: { cert: string; key: string };
  crl: string;
  server: { cert: string; key: string };
  otherCa: { cert: string };
  clients: Record<ClientName, TestClient>;
}

let cached: Promise<TestPki> | undefined;

export function makeTestPki(): Promise<TestPki> {
  cached ??= generate();
  return cached;
}

async function generate(): Promise<TestPki> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-pki-'));
  const ca = await createCertificateAuthority({ commonName: 'Postern Test CA', organization: 'Postern Test' });
  const other = await createCertificateAuthority({ commonName: 'Other CA', keyType: 'ecdsa' });
  const server = await issueServerCertificate(ca, { commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], keyType: 'ecdsa' });
  const issued: Record<ClientName, IssuedCertificate> = {
    alice: await issueClientCertificate(ca, { commonName: 'alice', organization: 'Example', emailAddress: 'alice@example.com', sanEmails: ['alice@example.com'] }),
    bob: await issueClientCertificate(ca, { commonName: 'bob', sanEmails: ['bob@example.com'], emailAddress: 'bob@example.com', keyType: 'ecdsa' }),
    revoked: await issueClientCertificate(ca, { commonName: 'mallory', emailAddress: 'mallory@example.com', keyType: 'ecdsa' }),
    expired: await issueClientCertificate(ca, { commonName: 'old-laptop', emailAddress: 'old@example.com', keyType: 'ecdsa', notBefore: new Date('2020-01-01T00:00:00Z'), notAfter: new Date('2021-01-01T00:00:00Z') }),
    selfsigned: await createSelfSignedCertificate({ commonName: 'eve', keyType: 'ed25519' }),
    ed25519: await issueClientCertificate(ca, { commonName: 'ed-device', emailAddress: 'ed@example.com', keyType: 'ed25519' }),
    ecdsa: await issueClientCertificate(ca, { commonName: 'ec-device', emailAddress: 'ec@example.com', keyType: 'ecdsa' }),
    stranger: await issueClientCertificate(other, { commonName: 'stranger', emailAddress: 'alice@example.com', keyType: 'ecdsa' }),
  };
  const file = async (name: string, text: string): Promise<string> => {
    const path = join(dir, name);
    await writeFile(path, text, { mode: 0o600 });
    return path;
  };
  const pki: TestPki = {
    dir,
    ca: { cert: await file('ca.crt', ca.cert), key: await file('ca.key', ca.key) },
    crl: await file('ca.crl', await createCrl(ca, [{ serial: issued.revoked.serial }])),
    server: { cert: await file('server.crt', server.cert + ca.cert), key: await file('server.key', server.key) },
    otherCa: { cert: await file('other-ca.crt', other.cert) },
    clients: {} as Record<ClientName, TestClient>,
  };
  for (const name of CLIENTS) {
    const c = issued[name];
    const x = new X509Certificate(c.cert);
    const spki = createHash('sha256').update(x.publicKey.export({ type: 'spki', format: 'der' })).digest();
    const pinHex = spki.toString('hex');
    pki.clients[name] = {
      cert: await file(`${name}.crt`, c.cert),
      key: await file(`${name}.key`, c.key),
      pem: await file(`${name}.pem`, c.key + c.cert),
      serial: c.serial,
      fingerprintSha256: createHash('sha256').update(x.raw).digest('hex'),
      fingerprintSha1: createHash('sha1').update(x.raw).digest('hex'),
      fingerprintMd5: createHash('md5').update(x.raw).digest('hex'),
      pinSha256: pinHex,
      pinColon: pinHex.toUpperCase().match(/../g)!.join(':'),
      pinBase64Url: spki.toString('base64url'),
    };
  }
  return pki;
}
