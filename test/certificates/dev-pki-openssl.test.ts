// writeDevelopmentPki() (what `npm start` creates under data/pki) checked with the exact openssl commands an
// administrator would run on the result. (pki.test.ts covers the generator profiles and the re-creation
// rules; this file is the command-line view of one development PKI.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto';
import { chmod, mkdtemp, readFile, readdir, rm, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { writeDevelopmentPki, DEVELOPMENT_P12_PASSWORD, type DevelopmentPki } from '../../engine/certificates/index.ts';
import { openssl, opensslWithStderr } from './openssl.ts';

let root: string;
let dir: string;
let pki: DevelopmentPki;
const OPTIONS = { hostname: 'mail.example.test', demoUser: { name: 'demo', email: 'demo@example.test' } };

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'postern-dev-pki-'));
  dir = join(root, 'data', 'pki'); // does not exist yet: created, with parents
  pki = await writeDevelopmentPki(dir, OPTIONS);
});
after(() => rm(root, { recursive: true, force: true }));

const mode = async (file: string): Promise<number> => (await stat(file)).mode & 0o777;
const spki = (key: string): string => createPublicKey(createPrivateKey(key)).export({ type: 'spki', format: 'der' }).toString('base64');

test('creates the CA, its CRL, the server pair and the demo client files; secrets are 0600', async () => {
  const names = ['ca.crl', 'ca.crt', 'ca.key', 'demo.crt', 'demo.key', 'demo.p12', 'demo.pem', 'server.crt', 'server.key'];
  assert.deepEqual((await readdir(dir)).sort(), names);
  assert.deepEqual(pki.created.map((f) => f.slice(dir.length + 1)).sort(), names);
  assert.deepEqual(
    [pki.ca, pki.caKey, pki.crl, pki.serverCert, pki.serverKey, pki.clientCert, pki.clientKey, pki.clientPem, pki.clientP12],
    ['ca.crt', 'ca.key', 'ca.crl', 'server.crt', 'server.key', 'demo.crt', 'demo.key', 'demo.pem', 'demo.p12'].map((f) => join(dir, f)));
  for (const secret of ['ca.key', 'server.key', 'demo.key', 'demo.pem', 'demo.p12']) assert.equal(await mode(join(dir, secret)), 0o600, secret);
  // Keys match their certificates; demo.pem is the key followed by the certificate.
  const demoCert = new X509Certificate(await readFile(pki.clientCert));
  assert.equal(spki(await readFile(pki.clientKey, 'utf8')), demoCert.publicKey.export({ type: 'spki', format: 'der' }).toString('base64'));
  assert.equal(await readFile(pki.clientPem, 'utf8'), (await readFile(pki.clientKey, 'utf8')) + (await readFile(pki.clientCert, 'utf8')));
  const serverLeaf = new X509Certificate(await readFile(pki.serverCert));
  assert.equal(spki(await readFile(pki.serverKey, 'utf8')), serverLeaf.publicKey.export({ type: 'spki', format: 'der' }).toString('base64'));
});

test('`openssl verify -CAfile ca.crt -CRLfile ca.crl -crl_check demo.crt` is OK; the CRL is the CA\'s and empty', () => {
  const out = openssl(['verify', '-CAfile', pki.ca, '-CRLfile', pki.crl, '-crl_check', '-purpose', 'sslclient', pki.clientCert]);
  assert.equal(out, `${pki.clientCert}: OK\n`);
  const crl = openssl(['crl', '-in', pki.crl, '-noout', '-text', '-CAfile', pki.ca]);
  assert.match(crl, /Issuer: O = Postern, CN = Postern Development CA\n/);
  assert.match(crl, /No Revoked Certificates\./);
  // Valid as long as the CA: nextUpdate = the CA's notAfter.
  const nextUpdate = /Next Update: (.+)\n/.exec(crl)![1];
  assert.equal(nextUpdate, openssl(['x509', '-in', pki.ca, '-noout', '-enddate']).trim().replace('notAfter=', ''));
  assert.equal(openssl(['x509', '-in', pki.clientCert, '-noout', '-subject', '-nameopt', 'RFC2253']), 'subject=emailAddress=demo@example.test,CN=demo,O=Postern\n');
  assert.match(openssl(['x509', '-in', pki.clientCert, '-noout', '-ext', 'subjectAltName']), /^\s+email:demo@example\.test$/m);
});

test('the server certificate names localhost, the hostname, 127.0.0.1 and ::1, and openssl verifies them', async () => {
  const san = openssl(['x509', '-in', pki.serverCert, '-noout', '-ext', 'subjectAltName']);
  assert.equal(san, 'X509v3 Subject Alternative Name: \n    DNS:localhost, DNS:mail.example.test, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1\n');
  for (const check of [['-verify_hostname', 'localhost'], ['-verify_hostname', 'mail.example.test'], ['-verify_ip', '127.0.0.1'], ['-verify_ip', '::1']]) {
    assert.equal(openssl(['verify', '-CAfile', pki.ca, '-purpose', 'sslserver', ...check, pki.serverCert]), `${pki.serverCert}: OK\n`, check.join(' '));
  }
  assert.throws(() => openssl(['verify', '-CAfile', pki.ca, '-verify_hostname', 'other.example', pki.serverCert]), /hostname mismatch/);
  // server.crt is the chain: the leaf, then the CA.
  assert.match(openssl(['storeutl', '-certs', pki.serverCert]), /^0: Certificate\n[\s\S]*^1: Certificate\n[\s\S]*^Total found: 2\n$/m);
  const blocks = await pemCertificates(pki.serverCert);
  assert.equal(blocks.length, 2);
  assert.deepEqual(blocks.slice(1), await pemCertificates(pki.ca));
  assert.equal(openssl(['x509', '-in', pki.serverCert, '-noout', '-subject', '-issuer']), 'subject=CN = localhost\nissuer=O = Postern, CN = Postern Development CA\n');
});

test('demo.p12 opens with `openssl pkcs12 -in demo.p12 -passin pass:postern -nokeys` (no -legacy needed)', async () => {
  assert.equal(DEVELOPMENT_P12_PASSWORD, 'postern');
  const certs = openssl(['pkcs12', '-in', pki.clientP12!, '-passin', 'pass:postern', '-nokeys']);
  const pems = certs.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g)!;
  assert.deepEqual(pems, [await readFile(pki.clientCert, 'utf8'), await readFile(pki.ca, 'utf8')], 'the demo certificate, then the CA');
  assert.match(certs, /friendlyName: Postern client certificate/);
  const key = openssl(['pkcs12', '-in', pki.clientP12!, '-passin', 'pass:postern', '-nocerts', '-nodes']);
  assert.equal(spki(/-----BEGIN PRIVATE KEY-----[\s\S]+?-----END PRIVATE KEY-----\n/.exec(key)![0]), spki(await readFile(pki.clientKey, 'utf8')));
  // Modern algorithms only, which is why OpenSSL 3 reads it without the legacy provider.
  const info = opensslWithStderr(['pkcs12', '-in', pki.clientP12!, '-passin', 'pass:postern', '-info', '-noout']);
  assert.match(info, /^MAC: sha256, Iteration 10000$/m);
  assert.equal(info.match(/PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF hmacWithSHA256/g)?.length, 2, info);
  assert.doesNotMatch(info, /RC2|3DES|DES-EDE|pbeWithSHA1/i);
  assert.throws(() => openssl(['pkcs12', '-in', pki.clientP12!, '-passin', 'pass:wrong', '-nokeys']), /mac verify failure|invalid password/i);
  // Node (OpenSSL underneath) loads it as a TLS identity.
  const pfx = await readFile(pki.clientP12!);
  assert.doesNotThrow(() => tls.createSecureContext({ pfx, passphrase: DEVELOPMENT_P12_PASSWORD }));
  assert.throws(() => tls.createSecureContext({ pfx, passphrase: 'wrong' }), /mac verify failure/i);
});

test('a second call reuses every file: same CA bytes, nothing created', async () => {
  const files = ['ca.crt', 'ca.key', 'ca.crl', 'server.crt', 'server.key', 'demo.crt', 'demo.key', 'demo.pem', 'demo.p12'];
  const before = await Promise.all(files.map((f) => readFile(join(dir, f))));
  const again = await writeDevelopmentPki(dir, OPTIONS);
  assert.deepEqual(again.created, []);
  assert.equal(again.clientP12, pki.clientP12);
  const after = await Promise.all(files.map((f) => readFile(join(dir, f))));
  for (let i = 0; i < files.length; i++) assert.ok(after[i]!.equals(before[i]!), files[i]);
  assert.equal(openssl(['verify', '-CAfile', again.ca, '-CRLfile', again.crl, '-crl_check', again.clientCert]), `${again.clientCert}: OK\n`);
});

const pemCertificates = async (file: string): Promise<string[]> =>
  (await readFile(file, 'utf8')).match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g) ?? [];

test('files rewritten over existing ones (a lost demo.crt) end up 0600 again, issued by the same CA', async () => {
  await chmod(pki.clientKey, 0o644);
  await chmod(pki.clientPem, 0o644);
  await chmod(pki.clientP12!, 0o644);
  await unlink(pki.clientCert);
  const caBefore = await readFile(pki.ca);
  const again = await writeDevelopmentPki(dir, OPTIONS);
  assert.deepEqual(again.created.map((f) => f.slice(dir.length + 1)), ['demo.crt', 'demo.key', 'demo.pem', 'demo.p12']);
  for (const secret of [again.clientKey, again.clientPem, again.clientP12!]) assert.equal(await mode(secret), 0o600, secret);
  assert.ok((await readFile(again.ca)).equals(caBefore));
  assert.equal(openssl(['verify', '-CAfile', again.ca, '-CRLfile', again.crl, '-crl_check', again.clientCert]), `${again.clientCert}: OK\n`);
  assert.equal(spki(await readFile(again.clientKey, 'utf8')),
    new X509Certificate(await readFile(again.clientCert)).publicKey.export({ type: 'spki', format: 'der' }).toString('base64'));
});
