// A CA renewed with the same key and name, the name encoded differently (PrintableString then UTF8String, as
// another tool writes it): OpenSSL compares names canonically, so the certificates the first CA certificate
// issued verify against the renewed one, and its CRL (issuer written the renewed way) revokes them at every new
// handshake. The check of a session already open (each MAIL FROM) compared the names' DER bytes: a certificate
// that CRL revokes kept its session.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';
import { x509 } from '../../engine/certificates/x509-provider.ts';
import {
  createCertificateAuthority, createCrl, issueClientCertificate, type Authority, type IssuedCertificate,
} from '../../engine/certificates/index.ts';

let pki: TestPki;
let server: TestServer;
let renewed: Authority;
let device: IssuedCertificate;

/** The same CA (key, name) in a new certificate whose name is written as UTF8String. */
async function renewedWithUtf8Name(ca: Authority): Promise<Authority> {
  const name = new x509.Name([{ CN: [{ utf8String: 'Renewed CA' }] }]);
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: '02', subject: name, issuer: name,
    notBefore: new Date(Date.now() - 3_600_000), notAfter: new Date(Date.now() + 365 * 86_400_000),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' }, publicKey: ca.keys.publicKey, signingKey: ca.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(ca.keys.publicKey),
    ],
  });
  return { ...ca, certificate, cert: certificate.toString('pem') };
}

before(async () => {
  pki = await makeTestPki();
  const first = await createCertificateAuthority({ commonName: 'Renewed CA', keyType: 'ecdsa' });
  renewed = await renewedWithUtf8Name(first);
  assert.notDeepEqual(Buffer.from(renewed.certificate.subjectName.toArrayBuffer()), Buffer.from(first.certificate.subjectName.toArrayBuffer()));
  device = await issueClientCertificate(first, { commonName: 'device', keyType: 'ecdsa' });
  server = await startTestServer({
    files: { 'ca.pem': renewed.cert, 'crl.pem': await createCrl(renewed, []) },
    config: `
localDomains: [example.com]
listeners:
  - name: require
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: require, caFiles: [ca.pem], crlFiles: [crl.pem] }
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(() => server?.stop());

async function connect(): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port('require'));
  await c.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: device.cert, key: device.key } });
  return c;
}

test('a session verified by a renewed CA whose name is encoded differently: its certificate revoked since, MAIL FROM is refused', async () => {
  const open = await connect();
  // `require`: the handshake verified it against the renewed CA certificate.
  assert.match((await open.command('MAIL FROM:<device@example.com>')).text, /^250 /);
  assert.match((await open.command('RSET')).text, /^250 /);
  const generation = server.runtime.generation;
  await writeFile(join(server.dir, 'crl.pem'), await createCrl(renewed, [device.serial]));
  await until('the CRL revoking the device is reloaded', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
  // OpenSSL's view: a new handshake finds it revoked.
  const again = await SmtpTestClient.connect(server.port('require'));
  await again.read();
  await again.command('EHLO client.example');
  await again.starttls({ ca: await readFile(pki.ca.cert, 'utf8'), cert: device.cert, key: device.key });
  assert.match(await again.read().then((r) => r.text, () => 'closed'), /^421 4\.7\.1 Client certificate not trusted \(revoked\)/);
  again.socket.destroy();
  assert.equal((await open.command('MAIL FROM:<device@example.com>')).text, '550 5.7.1 Client certificate has been revoked');
  open.socket.destroy();
});
