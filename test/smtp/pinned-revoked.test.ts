// A pin accepts a chain that does not verify (self-signed, foreign CA, expired), not a certificate the
// listener's own CRL revokes: `postern pki revoke` (the documented answer to a lost laptop) must stop a device
// whose key is also pinned (the account page pins what it issues on a listener that names no field).
// Revoked and pinned: no identity, so no AUTH EXTERNAL, no autoLogin, `require` refuses it. A pinned
// certificate revoked after its session logged in is refused at the next MAIL FROM, verified or not.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createCrl, issueClientCertificate, type IssuedCertificate } from '../../engine/certificates/index.ts';
import { until } from '../helpers/wait.ts';

let pki: TestPki;
let server: TestServer;
let ca = '';
let expired: IssuedCertificate;
let laptop: IssuedCertificate;

const pinOf = (c: { pinBase64Url: string }): string => c.pinBase64Url;

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  // Issued by the CA, expired (so unverified, "expired"), pinned: the pin is what names its account.
  expired = await issueClientCertificate(pki.authorities.ca, { commonName: 'old', keyType: 'ecdsa', notBefore: new Date(Date.now() - 3 * 86400_000), notAfter: new Date(Date.now() - 86400_000) });
  laptop = await issueClientCertificate(pki.authorities.ca, { commonName: 'laptop', keyType: 'ecdsa', notBefore: new Date(Date.now() - 3 * 86400_000), notAfter: new Date(Date.now() - 86400_000) });
  const tls = (cc: string) => `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: ${cc}, caFiles: [${pki.ca.cert}], crlFiles: [crl.pem] }`;
  server = await startTestServer({
    files: {
      'crl.pem': await createCrl(pki.authorities.ca, [pki.clients.revoked.serial, expired.serial]),
      devices: [
        `${pinOf(pki.clients.revoked)} mallory@example.com`,
        `${pinOf(pki.clients.alice)} alice@example.com`,
        `${await pinFor(expired)} old@example.com`,
        `${await pinFor(laptop)} laptop@example.com`,
      ].join('\n') + '\n',
    },
    config: `
localDomains: [example.com]
tables: { devices: ./devices }
listeners:
  - { name: request, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('request')}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { pins: devices }, limits: { greetingDelayMs: 0 } }
  - { name: auto, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('request')}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { pins: devices, autoLogin: true }, limits: { greetingDelayMs: 0 } }
  - { name: require, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('require')}, certificateIdentity: { pins: devices }, limits: { greetingDelayMs: 0 } }
`,
    scripts: { 'mailfrom.ts': `export default (ctx) => reject(String(ctx.connection.auth?.username ?? ctx.connection.certificateIdentity ?? 'none'), { code: 550 });` },
  });
});
after(() => server.stop());

async function pinFor(c: IssuedCertificate): Promise<string> {
  const { X509Certificate, createHash } = await import('node:crypto');
  return createHash('sha256').update(new X509Certificate(c.cert).publicKey.export({ type: 'spki', format: 'der' })).digest('base64url');
}

async function connect(listener: string, cert: { cert: string; key: string }): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port(listener));
  await c.hello({ starttls: { ca, ...cert } });
  return c;
}

const files = async (name: 'revoked' | 'alice') => ({ cert: await readFile(pki.clients[name].cert, 'utf8'), key: await readFile(pki.clients[name].key, 'utf8') });

test('pinned and verified (alice): EXTERNAL, autoLogin and require all accept it (the test can fail)', async () => {
  const a = await connect('request', await files('alice'));
  assert.equal((await a.command('AUTH EXTERNAL =')).code, 235);
  a.socket.destroy();
  const b = await connect('auto', await files('alice'));
  assert.equal((await b.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 alice@example.com');
  b.socket.destroy();
  const r = await connect('require', await files('alice'));
  assert.equal((await r.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 alice@example.com');
  r.socket.destroy();
});

for (const [name, cert] of [['revoked by the CRL', () => files('revoked')], ['expired and on the CRL', async () => expired]] as const) {
  test(`pinned but ${name}: no identity, no EXTERNAL, no autoLogin, and require refuses it`, async () => {
    const a = await connect('request', await cert());
    assert.doesNotMatch(a.transcript.join('\n'), /AUTH EXTERNAL/);
    assert.equal((await a.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
    a.socket.destroy();
    const b = await connect('auto', await cert());
    assert.equal((await b.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 none');
    b.socket.destroy();
    const r = await SmtpTestClient.connect(server.port('require'));
    await r.read();
    await r.command('EHLO x.example');
    await r.starttls({ ca, ...await cert() });
    assert.match(await r.read().then((x) => x.text, () => 'closed'), /^421 4\.7\.1 Client certificate not trusted/);
    r.socket.destroy();
  });
}

test('a pinned, unverified certificate revoked after its session logged in: the next MAIL FROM is refused', async () => {
  const c = await connect('auto', laptop);
  assert.equal((await c.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 laptop@example.com');
  const reloads = server.reloader.status.data.generation;
  await writeFile(join(server.dir, 'crl.pem'), await createCrl(pki.authorities.ca, [pki.clients.revoked.serial, expired.serial, laptop.serial]));
  await until('the reload of the new CRL', () => server.reloader.status.data.generation > reloads, { timeoutMs: 60_000 });
  assert.equal((await c.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 Client certificate has been revoked');
  c.socket.destroy();
});

test('a self-made certificate of 70 KB with a serial the CRL lists: an ordinary session without identity (its issuer is read by the DER walk, not a schema parse that gives up on it)', async () => {
  const { createSelfSignedCertificate } = await import('../../engine/certificates/index.ts');
  const huge = await createSelfSignedCertificate({ commonName: 'x', keyType: 'ecdsa', rdns: Array.from({ length: 1500 }, (_, i) => ({ OU: [`unit-${i}`.padEnd(16, '.')] })) });
  const generation = server.runtime.generation;
  await writeFile(join(server.dir, 'crl.pem'), await createCrl(pki.authorities.ca, [pki.clients.revoked.serial, expired.serial, laptop.serial, huge.serial]));
  await until('the CRL listing its serial is reloaded', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
  const c = await connect('request', huge);
  assert.equal((await c.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
  assert.equal((await c.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 none');
  c.socket.destroy();
});

// AUTH EXTERNAL after the handshake: the identity the handshake found, unless it was taken back since. It
// was granted (235, an `authenticated` line, the auth script told the built-in rule accepts) with a pin
// removed or a certificate revoked since, only the MAIL FROM after it refused.
test('AUTH EXTERNAL on a session whose pin was removed, then whose certificate was revoked, since the handshake: refused', async () => {
  const devices = join(server.dir, 'devices');
  const pinned = await readFile(devices, 'utf8');
  const reloaded = async (what: string, write: () => Promise<void>): Promise<void> => {
    const generation = server.runtime.generation;
    await write();
    await until(what, () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
  };
  const unpinned = await connect('request', await files('alice'));
  await reloaded('the pin table without alice', () => writeFile(devices, pinned.split('\n').filter((l) => !l.endsWith(' alice@example.com')).join('\n')));
  assert.equal((await unpinned.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
  unpinned.socket.destroy();
  await reloaded('the pin table with alice again', () => writeFile(devices, pinned));
  const revoked = await connect('request', await files('alice'));
  await reloaded('a CRL revoking alice', async () => writeFile(join(server.dir, 'crl.pem'), await createCrl(pki.authorities.ca, [pki.clients.alice.serial])));
  assert.equal((await revoked.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
  revoked.socket.destroy();
});
