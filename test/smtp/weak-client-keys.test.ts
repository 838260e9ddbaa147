// What the listener trusts from a client certificate whose cryptography is weak or whose purpose is not a
// client's, over real handshakes: a pin of a key too weak names no account; the chain verdicts OpenSSL gives.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createSelfSignedCertificate, issueClientCertificate, issueServerCertificate, type IssuedCertificate } from '../../engine/certificates/index.ts';

/** A legacy client still willing to present a key below Node's default security level. */
const LEGACY = 'DEFAULT@SECLEVEL=0';
const pinOf = (c: IssuedCertificate): string =>
  createHash('sha256').update(new X509Certificate(c.cert).publicKey.export({ type: 'spki', format: 'der' })).digest('hex');

let pki: TestPki;
let ca: string;
let server: TestServer;
let rsa1024: IssuedCertificate;
let rsa2048: IssuedCertificate;
let issued1024: IssuedCertificate;
let serverOnly: IssuedCertificate;

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  [rsa1024, rsa2048, issued1024, serverOnly] = await Promise.all([
    createSelfSignedCertificate({ commonName: 'old-printer', keyType: 'rsa', rsaBits: 1024 }),
    createSelfSignedCertificate({ commonName: 'new-printer', keyType: 'rsa', rsaBits: 2048 }),
    issueClientCertificate(pki.authorities.ca, { commonName: 'weak@example.com', emailAddress: 'weak@example.com', keyType: 'rsa', rsaBits: 1024 }),
    // One of the organisation's web servers, from the same CA: EKU serverAuth only.
    issueServerCertificate(pki.authorities.ca, { commonName: 'www@example.com', emailAddress: 'www@example.com', dnsNames: ['www.example.com'] }),
  ]);
  const tls = `{ mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }`;
  server = await startTestServer({
    files: { pins: `${pinOf(rsa1024)}  printer@example.com\n${pinOf(rsa2048)}  scanner@example.com\n` },
    config: `
localDomains: [example.com]
tables: { pins: ./pins }
listeners:
  - { name: pinned, listen: "127.0.0.1:0", tls: ${tls}, certificateIdentity: { pins: pins } }
  - { name: field, listen: "127.0.0.1:0", tls: ${tls}, certificateIdentity: { field: emailAddress } }
`,
    scripts: {
      'mailfrom.ts': `export default (ctx) => { const c = ctx.connection.clientCertificate;
        return reject([ctx.connection.certificateIdentity ?? 'no-identity', c ? c.verified + ' ' + c.verifyError + ' ' + c.verifyErrorCode : 'none'].join(' '), { code: 550 }); };`,
    },
  });
});
after(() => server.stop());

async function seen(listener: string, c: IssuedCertificate): Promise<string> {
  const client = await SmtpTestClient.connect(server.port(listener), { implicitTls: { ca, cert: c.cert, key: c.key, ciphers: LEGACY } });
  await client.hello();
  const r = await client.command('MAIL FROM:<x@elsewhere.example>');
  await client.quit();
  return r.text.replace(/^550 5\.7\.1 /, '');
}

test('a pinned RSA-1024 key names no account; a pinned RSA-2048 key does', async () => {
  assert.equal(await seen('pinned', rsa1024), 'no-identity false invalid EE_KEY_TOO_SMALL');
  assert.match(await seen('pinned', rsa2048), /^scanner@example\.com false self-signed /);
});

test('a CA-issued RSA-1024 certificate does not verify (OpenSSL security level 2), so its field names no account', async () => {
  // Node names OpenSSL's EE_KEY_TOO_SMALL only UNSPECIFIED: the listener says which.
  assert.equal(await seen('field', issued1024), 'no-identity false invalid EE_KEY_TOO_SMALL');
});

test('a server certificate of the same CA (EKU serverAuth only) is no client certificate: INVALID_PURPOSE, no account', async () => {
  assert.equal(await seen('field', serverOnly), 'no-identity false invalid INVALID_PURPOSE');
});
