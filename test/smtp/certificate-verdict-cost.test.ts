// An open session's certificate is judged again at each MAIL FROM, RCPT TO and DATA (certificate-verdict-since.test.ts),
// among other things against the listener's CRLs. That look is a Map lookup by serial, but a serial the CRLs list makes
// it read the certificate, and when its issuer is written otherwise than the CRL's, parse it with OpenSSL (milliseconds
// for a large one). A pinned device's certificate is of its owner's making, serial included, and CRLs (and so the
// serials they list) are public: such a session had its certificate parsed again at every command, a thousand times
// for a transaction of a thousand recipients. The CRLs change only with a reload: one look per CRL set is enough.
// Counted here by the calls to X509Certificate#checkIssued (the server runs in this process), not timed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createCrl, createSelfSignedCertificate, type IssuedCertificate } from '../../engine/certificates/index.ts';

let pki: TestPki;
let server: TestServer;
let ca = '';
let device: IssuedCertificate;

const pinOf = (pem: string): string => createHash('sha256').update(new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' })).digest('base64url');

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  device = await createSelfSignedCertificate({ commonName: 'sensor', keyType: 'ecdsa' });
  // The CA's CRL lists a serial that happens to be the device's (its own making).
  const crl = await createCrl(pki.authorities.ca, [device.serial], { nextUpdate: new Date(Date.now() + 30 * 86400_000) });
  await writeFile(join(pki.dir, 'colliding.crl'), crl);
  const tls = `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}], crlFiles: [${join(pki.dir, 'colliding.crl')}] }`;
  server = await startTestServer({
    files: { devices: `${pinOf(device.cert)} sensor@example.com\n` },
    config: `
localDomains: [example.com]
tables: { devices: ./devices }
listeners:
  - { name: pins, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, certificateIdentity: { pins: devices, autoLogin: true }, limits: { greetingDelayMs: 0 } }
`,
  });
});
after(() => server.stop());

test('a pinned certificate whose serial a CRL lists is not parsed again at every command of its session', async () => {
  const c = await SmtpTestClient.connect(server.port('pins'));
  await c.hello({ starttls: { ca, cert: device.cert, key: device.key } });
  const checkIssued = X509Certificate.prototype.checkIssued;
  let parsed = 0;
  X509Certificate.prototype.checkIssued = function (this: X509Certificate, other: X509Certificate) {
    parsed++;
    return checkIssued.call(this, other);
  };
  try {
    assert.match((await c.command('MAIL FROM:<sensor@example.com>')).text, /^250 /, 'the pinned device sends (the test can fail)');
    for (let i = 0; i < 20; i++) assert.match((await c.command(`RCPT TO:<r${i}@example.com>`)).text, /^250 /);
    await c.command('RSET');
  } finally {
    X509Certificate.prototype.checkIssued = checkIssued;
  }
  assert.ok(parsed <= 1, `the certificate was parsed ${parsed} times for 21 commands`);
  c.socket.destroy();
});
