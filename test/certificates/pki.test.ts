// The PKI generator checked by openssl: certificate profiles, CRLs, chains, PKCS#12, the development PKI.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import {
  createCertificateAuthority, createCrl, exportPkcs12, issueClientCertificate, loadAuthority, writeDevelopmentPki,
  DEVELOPMENT_P12_PASSWORD,
} from '../../engine/certificates/index.ts';
import { openssl, opensslWithStderr } from './openssl.ts';

let pki: TestPki;
let dir: string;
before(async () => {
  pki = await makeTestPki();
  dir = await mkdtemp(join(tmpdir(), 'postern-pki-test-'));
});
after(() => rm(dir, { recursive: true, force: true }));

const ext = (file: string, names: string): string => openssl(['x509', '-in', file, '-noout', '-ext', names]);
const mode = async (file: string): Promise<number> => (await stat(file)).mode & 0o777;

test('CA profile: CA:TRUE (critical), keyCertSign + cRLSign, SKI = AKI', () => {
  const text = ext(pki.ca.cert, 'basicConstraints,keyUsage,subjectKeyIdentifier,authorityKeyIdentifier');
  assert.match(text, /Basic Constraints: critical\n\s+CA:TRUE/);
  assert.match(text, /Key Usage: critical\n\s+Certificate Sign, CRL Sign\n/);
  const ski = /Subject Key Identifier: \n\s+(\S+)/.exec(text)![1];
  const aki = /Authority Key Identifier: \n\s+(?:keyid:)?(\S+)/.exec(text)![1];
  assert.equal(aki, ski);
});

test('client profile: clientAuth, digitalSignature, CA:FALSE, SAN email, emailAddress in the subject; openssl verifies it', () => {
  const text = ext(pki.clients.alice.cert, 'basicConstraints,keyUsage,extendedKeyUsage,subjectAltName,authorityKeyIdentifier');
  assert.match(text, /Basic Constraints: critical\n\s+CA:FALSE/);
  assert.match(text, /Key Usage: critical\n\s+Digital Signature\n/);
  assert.match(text, /Extended Key Usage: \n\s+TLS Web Client Authentication\n/);
  assert.match(text, /Subject Alternative Name: \n\s+email:alice@example.com\n/);
  assert.equal(openssl(['x509', '-in', pki.clients.alice.cert, '-noout', '-subject', '-nameopt', 'RFC2253']).trim(),
    'subject=emailAddress=alice@example.com,CN=alice,O=Example');
  // emailAddress is the PKCS#9 attribute (OID 1.2.840.113549.1.9.1), an IA5String.
  assert.match(openssl(['asn1parse', '-in', pki.clients.alice.cert]), /:emailAddress\n.*IA5STRING\s+:alice@example.com/);
  for (const name of ['alice', 'bob', 'ecdsa', 'ed25519'] as const) {
    assert.equal(openssl(['verify', '-CAfile', pki.ca.cert, '-purpose', 'sslclient', '-crl_check', '-CRLfile', pki.crl, pki.clients[name].cert]).trim(),
      `${pki.clients[name].cert}: OK`);
  }
});

test('server profile: serverAuth and SAN DNS + IP', () => {
  const text = ext(pki.server.cert, 'extendedKeyUsage,subjectAltName');
  assert.match(text, /TLS Web Server Authentication/);
  assert.match(text, /DNS:localhost, IP Address:127.0.0.1/);
  assert.match(openssl(['verify', '-CAfile', pki.ca.cert, '-purpose', 'sslserver', pki.server.cert]), /: OK/);
});

test('CRL: signed by the CA, lists the revoked serial, carries a CRL number and AKI; openssl refuses the revoked', () => {
  const text = openssl(['crl', '-in', pki.crl, '-noout', '-text', '-CAfile', pki.ca.cert]);
  assert.doesNotThrow(() => openssl(['crl', '-in', pki.crl, '-noout', '-CAfile', pki.ca.cert]), 'signature verifies');
  assert.throws(() => openssl(['crl', '-in', pki.crl, '-noout', '-CAfile', pki.otherCa.cert]), 'not by another CA');
  assert.match(text, new RegExp(`Serial Number: ${pki.clients.revoked.serial.toUpperCase()}`));
  assert.match(text, /X509v3 CRL Number: \n\s+\d+/);
  assert.match(text, /X509v3 Authority Key Identifier/);
  assert.match(text, /Key Compromise/);
  assert.throws(() => openssl(['verify', '-CAfile', pki.ca.cert, '-crl_check', '-CRLfile', pki.crl, pki.clients.revoked.cert]),
    /certificate revoked/);
});

test('createCrl takes serials, certificate PEMs and issued certificates alike', async () => {
  const { ca } = pki.authorities;
  const c = pki.clients;
  const pem = await createCrl(ca, [c.bob.serial, await readFile(c.ecdsa.cert, 'utf8'), { serial: c.alice.serial }], {
    nextUpdate: new Date('2099-01-01T00:00:00Z'), number: 7,
  });
  const text = openssl(['crl', '-noout', '-text'], pem);
  for (const serial of [c.bob.serial, c.ecdsa.serial, c.alice.serial]) assert.match(text, new RegExp(serial.toUpperCase()));
  assert.match(text, /Next Update: Jan  1 00:00:00 2099 GMT/);
  assert.match(text, /CRL Number: \n\s+7\n/);
});

test('self-signed: a leaf (CA:FALSE, clientAuth) signed by its own key', async () => {
  const text = ext(pki.clients.selfsigned.cert, 'basicConstraints,extendedKeyUsage');
  assert.match(text, /CA:FALSE/);
  assert.match(text, /TLS Web Client Authentication/);
  assert.throws(() => openssl(['verify', '-CAfile', pki.ca.cert, pki.clients.selfsigned.cert]), /self-signed certificate/);
  const x = new X509Certificate(await readFile(pki.clients.selfsigned.cert));
  assert.equal(x.subject, x.issuer);
  assert.ok(x.verify(x.publicKey));
});

test('intermediate CAs chain to their root', async () => {
  const intermediate = await createCertificateAuthority({ commonName: 'Intermediate', keyType: 'ecdsa', issuer: pki.authorities.ca });
  const leaf = await issueClientCertificate(intermediate, { commonName: 'chained', keyType: 'ed25519' });
  const untrusted = join(dir, 'intermediate.crt');
  await writeFile(untrusted, intermediate.cert);
  assert.match(openssl(['verify', '-CAfile', pki.ca.cert, '-untrusted', untrusted, '-purpose', 'sslclient'], leaf.cert), /OK/);
});

test('loadAuthority signs with a CA openssl made (P-384), and with our own', async () => {
  const caKey = join(dir, 'p384-ca.key');
  const caCert = join(dir, 'p384-ca.crt');
  openssl(['req', '-x509', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-keyout', caKey, '-out', caCert,
    '-days', '2', '-subj', '/CN=OpenSSL CA', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  const authority = await loadAuthority(await readFile(caCert, 'utf8'), await readFile(caKey, 'utf8'));
  assert.equal(authority.keyType, 'ecdsa');
  const leaf = await issueClientCertificate(authority, { commonName: 'from-openssl-ca', keyType: 'ecdsa' });
  assert.match(openssl(['verify', '-CAfile', caCert, '-purpose', 'sslclient'], leaf.cert), /OK/);
  const crl = await createCrl(authority, [leaf]);
  assert.match(openssl(['crl', '-noout', '-text', '-CAfile', caCert], crl), new RegExp(leaf.serial.toUpperCase()));

  const ours = await loadAuthority(await readFile(pki.ca.cert, 'utf8'), await readFile(pki.ca.key, 'utf8'));
  assert.equal(ours.keyType, 'rsa');
  const again = await issueClientCertificate(ours, { commonName: 'reloaded', keyType: 'ecdsa' });
  assert.match(openssl(['verify', '-CAfile', pki.ca.cert], again.cert), /OK/);
});

test('PKCS#12 export: readable by openssl pkcs12 with the password, modern algorithms only, mode 0600', async () => {
  const out = join(dir, 'alice.p12');
  const c = pki.clients.alice;
  assert.equal(await exportPkcs12(await readFile(c.cert, 'utf8'), await readFile(c.key, 'utf8'), await readFile(pki.ca.cert, 'utf8'), 'postern', out), true);
  assert.equal(await mode(out), 0o600);
  const info = opensslWithStderr(['pkcs12', '-in', out, '-info', '-nokeys', '-passin', 'pass:postern']);
  assert.match(info, /MAC: sha256/);
  assert.match(info, /PBES2, PBKDF2, AES-256-CBC/);
  // Only the algorithm lines: a certificate's base64 may well contain "RC2" or "3DES" by chance.
  assert.doesNotMatch(info.replace(/-----BEGIN [A-Z ]+-----[\s\S]+?-----END [A-Z ]+-----/g, ''), /RC2|3DES|pbeWithSHA1/i);
  assert.match(info, /subject=O = Example, CN = alice, emailAddress = alice@example.com/);
  assert.match(info, /subject=O = Postern Test, CN = Postern Test CA/, 'the CA travels along');
  const key = openssl(['pkcs12', '-in', out, '-nocerts', '-nodes', '-passin', 'pass:postern']);
  assert.match(key, /BEGIN PRIVATE KEY/);
  assert.throws(() => openssl(['pkcs12', '-in', out, '-info', '-nokeys', '-passin', 'pass:wrong']), /mac verify failure|invalid password/i);
});

test('PKCS#12 export: false when openssl is not installed, an error naming the file when it fails', async () => {
  const out = join(dir, 'none.p12');
  const c = pki.clients.ecdsa;
  const [cert, key] = [await readFile(c.cert, 'utf8'), await readFile(c.key, 'utf8')];
  const path = process.env.PATH;
  process.env.PATH = join(dir, 'no-such-bin');
  try {
    assert.equal(await exportPkcs12(cert, key, null, 'postern', out), false);
  } finally {
    process.env.PATH = path;
  }
  await assert.rejects(stat(out), 'no file left behind');
  await assert.rejects(exportPkcs12(cert, await readFile(pki.clients.bob.key, 'utf8'), null, 'postern', out),
    (err: Error) => err.message.startsWith(`${out}: openssl pkcs12 -export failed`));
});

test('development PKI: created once, keys 0600, usable over TLS with its CA and CRL', async () => {
  const devDir = join(dir, 'dev');
  const first = await writeDevelopmentPki(devDir, { hostname: 'mail.example.test', demoUser: { name: 'demo', email: 'demo@example.test' } });
  assert.deepEqual(first.created.map((f) => f.slice(devDir.length + 1)).sort(),
    ['ca.crl', 'ca.crt', 'ca.key', 'demo.crt', 'demo.key', 'demo.p12', 'demo.pem', 'server.crt', 'server.key']);
  for (const secret of [first.caKey, first.serverKey, first.clientKey, first.clientPem, first.clientP12!]) assert.equal(await mode(secret), 0o600, secret);
  assert.equal(await mode(devDir), 0o700);
  assert.match(ext(first.serverCert, 'subjectAltName'), /DNS:localhost, DNS:mail.example.test, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1/);
  assert.match(openssl(['x509', '-in', first.serverCert, '-noout', '-subject']), /CN = localhost/);
  assert.match(openssl(['x509', '-in', first.clientCert, '-noout', '-subject', '-nameopt', 'RFC2253']), /emailAddress=demo@example.test,CN=demo/);
  assert.match(openssl(['pkcs12', '-in', first.clientP12!, '-info', '-nokeys', '-passin', `pass:${DEVELOPMENT_P12_PASSWORD}`]), /CN = demo/);
  assert.match(await readFile(first.clientPem, 'utf8'), /BEGIN PRIVATE KEY[\s\S]+BEGIN CERTIFICATE/);

  // A real handshake with the development material: the client is authorized against CA + empty CRL.
  const r = (f: string): Promise<string> => readFile(f, 'utf8');
  const srv = tls.createServer({
    cert: await r(first.serverCert), key: await r(first.serverKey), ca: await r(first.ca), crl: await r(first.crl),
    requestCert: true, rejectUnauthorized: false,
  });
  const seen = new Promise<[boolean, unknown]>((resolve) => srv.once('secureConnection', (s) => { resolve([s.authorized, s.authorizationError]); s.end(); }));
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const sock = tls.connect({ port: (srv.address() as AddressInfo).port, host: '127.0.0.1', servername: 'mail.example.test', ca: await r(first.ca), cert: await r(first.clientPem), key: await r(first.clientPem) });
  sock.on('error', () => {});
  await new Promise<void>((resolve, reject) => { sock.once('secureConnect', resolve); sock.once('error', reject); });
  assert.equal(sock.authorized, true, 'the server certificate verifies for the configured hostname');
  assert.deepEqual(await seen, [true, null]);
  sock.destroy();
  srv.close();

  // Second start: nothing is rewritten.
  const before = await readFile(first.ca, 'utf8');
  const second = await writeDevelopmentPki(devDir, { hostname: 'mail.example.test', demoUser: { name: 'demo', email: 'demo@example.test' } });
  assert.deepEqual(second.created, []);
  assert.equal(second.clientP12, first.clientP12);
  assert.equal(await readFile(second.ca, 'utf8'), before);

  // A missing server key: only the server pair is issued again, by the same CA.
  await unlink(first.serverKey);
  const third = await writeDevelopmentPki(devDir, { hostname: 'mail.example.test', demoUser: { name: 'demo', email: 'demo@example.test' } });
  assert.deepEqual(third.created.map((f) => f.slice(devDir.length + 1)).sort(), ['server.crt', 'server.key']);
  assert.match(openssl(['verify', '-CAfile', third.ca, '-purpose', 'sslserver', third.serverCert]), /OK/);

  // An expired CRL (which would fail every development certificate) is signed anew, entries kept.
  const devCa = await loadAuthority(await r(first.ca), await r(first.caKey));
  await writeFile(first.crl, await createCrl(devCa, ['1234abcd'], { thisUpdate: new Date('2020-01-01'), nextUpdate: new Date('2020-02-01') }));
  const fourth = await writeDevelopmentPki(devDir, { hostname: 'mail.example.test', demoUser: { name: 'demo', email: 'demo@example.test' } });
  assert.deepEqual(fourth.created, [first.crl]);
  const crlText = openssl(['crl', '-in', first.crl, '-noout', '-text', '-CAfile', first.ca]);
  assert.match(crlText, /Serial Number: 1234ABCD/);
  assert.doesNotMatch(crlText, /Next Update: .* 2020 GMT/);
});
