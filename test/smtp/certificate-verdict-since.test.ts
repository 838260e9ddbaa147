// An open session's certificate is judged by its current verdict, not the handshake's: the verdict a TLS session
// would carry across a resumption (which certificate listeners refuse: tls-resumption.test.ts) must not outlive its
// reasons within one long session either. Two ways it did:
// - a pin removed from the table (`postern pins remove`) while a session that had not logged in with it stays open:
//   scripts kept seeing the pin's account as `certificateIdentity`, so a script relaying for pinned devices relayed;
// - a certificate that expired since the handshake stayed "verified": relayClientCertificates relayed, AUTH EXTERNAL
//   logged in, and the field's account stayed the session's, for as long as the client kept the connection open.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createSelfSignedCertificate, issueClientCertificate, type IssuedCertificate } from '../../engine/certificates/index.ts';
import { until } from '../helpers/wait.ts';

let pki: TestPki;
let server: TestServer;
let ca = '';
let device: IssuedCertificate;
let laptop: IssuedCertificate;

const pinOf = (pem: string): string => createHash('sha256').update(new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' })).digest('base64url');

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  device = await createSelfSignedCertificate({ commonName: 'sensor', keyType: 'ecdsa' });
  laptop = await createSelfSignedCertificate({ commonName: 'laptop', keyType: 'ecdsa' });
  const tls = `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }`;
  server = await startTestServer({
    files: { devices: `${pinOf(device.cert)} sensor@example.com\n`, laptops: `${pinOf(laptop.cert)} carol@example.com boss@example.com\n` },
    config: `
localDomains: [example.com]
tables: { devices: ./devices, laptops: ./laptops }
listeners:
  - { name: pins, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, certificateIdentity: { pins: devices }, scripts: ./scripts, limits: { greetingDelayMs: 0 } }
  - { name: field, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { field: emailAddress }, relayClientCertificates: true, limits: { greetingDelayMs: 0 } }
  - { name: senders, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, certificateIdentity: { pins: laptops, autoLogin: true }, senderLogin: { enforce: true }, limits: { greetingDelayMs: 0 } }
`,
    // As examples/postfix-policy-service: a pinned device may relay.
    scripts: { 'rcptto.ts': `export default (ctx) => ctx.builtin.accepted ? undefined : ctx.connection.certificateIdentity ? accept() : reject('Relay access denied', { code: 554, enhanced: '5.7.1' });` },
  });
});
after(() => server.stop());

async function connect(listener: string, cert: { cert: string; key: string }): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port(listener));
  await c.hello({ starttls: { ca, cert: cert.cert, key: cert.key } });
  return c;
}

/**
 * `text`, with empty lines added so that it is no shorter than `file` is now: a file cut short is taken only once
 * unchanged for 2 s (SHRUNK_SETTLE_MS, tested in test/reload/half-written.test.ts), idle time in each edit here.
 */
async function noShorter(file: string, text: string): Promise<string> {
  const short = (await readFile(file)).length - Buffer.byteLength(text);
  return short > 0 ? text + '\n'.repeat(short) : text;
}

async function relay(c: SmtpTestClient): Promise<string> {
  const mail = await c.command('MAIL FROM:<sensor@example.com>');
  if (mail.code !== 250) return mail.text;
  const rcpt = await c.command('RCPT TO:<someone@elsewhere.example>');
  await c.command('RSET');
  return rcpt.text;
}

test('a pin removed while a session that never logged in with it is open: its scripts no longer see the account (no relay)', async () => {
  const c = await connect('pins', device);
  assert.match(await relay(c), /^250 /, 'the pinned device relays (the test can fail)');
  const devices = join(server.dir, 'devices');
  const generation = server.runtime.generation;
  await writeFile(devices, await noShorter(devices, ''));
  await until('the pin table without the device', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
  assert.match(await relay(c), /^(554|550) /, 'relayed for a pin removed since the handshake');
  c.socket.destroy();
  // A new session is refused the same way.
  const d = await connect('pins', device);
  assert.match(await relay(d), /^554 /);
  d.socket.destroy();
});

// A pin line is `pin account [more senders…]`: the senders are the pin's to grant, and so the table's to take back.
test('a sender removed from the pin line of a session logged in with it: that sender is refused at the next MAIL FROM', async () => {
  const c = await connect('senders', laptop);
  assert.match((await c.command('MAIL FROM:<boss@example.com>')).text, /^250 /, 'the pin line lets carol send as boss (the test can fail)');
  await c.command('RSET');
  const generation = server.runtime.generation;
  await writeFile(join(server.dir, 'laptops'), await noShorter(join(server.dir, 'laptops'), `${pinOf(laptop.cert)} carol@example.com\n`));
  await until('the pin line without boss', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
  assert.match((await c.command('MAIL FROM:<boss@example.com>')).text, /^5\d\d /, 'sent as a sender removed from the pin line since the handshake');
  assert.match((await c.command('MAIL FROM:<carol@example.com>')).text, /^250 /, 'the account itself is still the session\'s');
  c.socket.destroy();
});

test('a certificate that expired since the handshake: no more relaying, no AUTH EXTERNAL, and a session logged in with it is closed', async () => {
  // Valid for a few seconds: OpenSSL verifies it at the handshake, then it expires under the open sessions.
  const notAfter = new Date(Math.ceil(Date.now() / 1000) * 1000 + 6000);
  const shortLived = await issueClientCertificate(pki.authorities.ca, { commonName: 'temp', emailAddress: 'temp@example.com', keyType: 'ecdsa', notAfter });
  const relaying = await connect('field', shortLived);
  const loggedIn = await connect('field', shortLived);
  const later = await connect('field', shortLived);
  assert.equal((await loggedIn.command('AUTH EXTERNAL =')).code, 235);
  assert.ok(Date.now() < notAfter.getTime(), 'the handshakes and login took place before the certificate expired (else the machine was too slow for this test)');
  assert.match(await relay(relaying), /^250 /, 'a verified certificate relays (the test can fail)');
  await until('the certificate expired', () => Date.now() > notAfter.getTime() + 1000, { timeoutMs: 30_000, intervalMs: 100 });
  assert.match(await relay(relaying), /^5\d\d 5\.7\.1 /, 'relayed on a certificate expired since the handshake');
  assert.equal((await later.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid', 'AUTH EXTERNAL with an expired certificate');
  assert.equal((await loggedIn.command('MAIL FROM:<temp@example.com>')).text, '421 4.7.0 Client certificate has expired, connect again');
  relaying.socket.destroy();
  loggedIn.socket.destroy();
  later.socket.destroy();
});

// Last: it edits the configuration. A mapping found wrong (a CN any sub-CA may write) is changed for what follows,
// as a password reset withdraws the logins the old password opened.
test('certificateIdentity.field changed by a reload: a session logged in with the old mapping\'s account is refused at its next MAIL FROM', async () => {
  const alice = { cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') };
  const c = await connect('field', alice);
  assert.equal((await c.command('AUTH EXTERNAL =')).code, 235);
  assert.match((await c.command('MAIL FROM:<alice@example.com>')).text, /^250 /);
  await c.command('RSET');
  const config = join(server.dir, 'postern.yaml');
  const generation = server.runtime.generation;
  await writeFile(config, await noShorter(config, (await readFile(config, 'utf8')).replace('certificateIdentity: { field: emailAddress }', 'certificateIdentity: { field: CN }')));
  await until('the configuration with field: CN', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
  assert.equal((await c.command('MAIL FROM:<alice@example.com>')).text, '550 5.7.1 Client certificate is no longer accepted', 'kept the account of a mapping reloaded away');
  c.socket.destroy();
});
