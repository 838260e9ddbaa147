// A session whose transaction began (MAIL FROM) before its certificate was revoked: the revocation was checked
// only at MAIL FROM, so a stolen laptop holding a session with a MAIL FROM already answered could still name
// recipients and relay its message (relayClientCertificates) after `postern pki revoke`. The session's next
// command is refused: RCPT TO, and the end of DATA (before any 250: nothing is acknowledged, nothing lost).
// Mail it sent and was answered 250 for before stays queued, to be delivered (accepted from a device trusted
// then); `postern queue hold --certificate` finds it by the certificate's fingerprint or its key's.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createCrl } from '../../engine/certificates/index.ts';
import { until } from '../helpers/wait.ts';
import { runCli } from '../helpers/cli.ts';
import { X509Certificate, createHash } from 'node:crypto';

let pki: TestPki;
let server: TestServer;
let ca = '';

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  server = await startTestServer({
    files: { 'crl.pem': await createCrl(pki.authorities.ca, [pki.clients.revoked.serial]) },
    config: `
localDomains: [example.com]
listeners:
  - name: relay
    listen: "127.0.0.1:0"
    reverseDns: false
    relayClientCertificates: true
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}], crlFiles: [crl.pem] }
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(() => server.stop());

async function alice(): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port('relay'));
  await c.hello({ starttls: { ca, cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') } });
  return c;
}

async function revokeAlice(revoked: boolean): Promise<void> {
  const generation = server.runtime.generation;
  const file = join(server.dir, 'crl.pem');
  const crl = await createCrl(pki.authorities.ca, revoked ? [pki.clients.revoked.serial, pki.clients.alice.serial] : [pki.clients.revoked.serial]);
  // Padded with empty lines to the length of the CRL in force: the shorter one (alice no longer listed) was taken
  // only once unchanged for 2 s, as a file cut short is (SHRUNK_SETTLE_MS, tested in test/reload/half-written).
  const short = (await readFile(file)).length - Buffer.byteLength(crl);
  await writeFile(file, short > 0 ? crl + '\n'.repeat(short) : crl);
  await until('the reload of the new CRL', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
}

test('revoked after MAIL FROM: RCPT TO refused', async () => {
  const c = await alice();
  try {
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<first@elsewhere.example>')).code, 250, 'verified: relays (the test can fail)');
    await revokeAlice(true);
    assert.equal((await c.command('RCPT TO:<second@elsewhere.example>')).text, '550 5.7.1 Client certificate has been revoked');
  } finally {
    c.socket.destroy();
    await revokeAlice(false);
  }
});

test('revoked after RCPT TO: the message is refused at the end of DATA, never acknowledged', async () => {
  const c = await alice();
  try {
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<bob@elsewhere.example>')).code, 250);
    await revokeAlice(true);
    const data = await c.command('DATA');
    if (data.code === 354) assert.equal((await c.command('Subject: stolen\r\n\r\nhello\r\n.')).text, '550 5.7.1 Client certificate has been revoked');
    else assert.equal(data.text, '550 5.7.1 Client certificate has been revoked');
    assert.deepEqual(await server.runtime.spool.list(), [], 'nothing was spooled');
  } finally {
    c.socket.destroy();
    await revokeAlice(false);
  }
});

test('mail accepted before the revocation stays queued; queue hold --certificate finds it by fingerprint or pin', async () => {
  const c = await alice();
  const accepted = await c.sendMail('alice@example.com', ['bob@elsewhere.example']);
  assert.equal(accepted.code, 250);
  const id = /queued as ([0-9a-z]+)/.exec(accepted.text)![1]!;
  c.socket.destroy();
  const bystander = await SmtpTestClient.connect(server.port('relay'));
  await bystander.hello();
  assert.equal((await bystander.sendMail('carol@example.org', ['dave@example.com'])).code, 250);
  bystander.socket.destroy();
  await revokeAlice(true);
  try {
    assert.ok((await server.runtime.spool.list()).includes(id), 'still queued');
    const cert = new X509Certificate(await readFile(pki.clients.alice.cert));
    const queue = (...args: string[]) => runCli(['queue', ...args, '-c', join(server.dir, 'postern.yaml')]);
    const byFingerprint = await queue('hold', '--certificate', cert.fingerprint256);
    assert.equal(byFingerprint.stdout, `1 message placed on hold: ${id}\n`, byFingerprint.stderr);
    assert.equal((await queue('release', '--all')).code, 0);
    const pin = createHash('sha256').update(cert.publicKey.export({ type: 'spki', format: 'der' })).digest('base64url');
    assert.equal((await queue('hold', '--certificate', pin)).stdout, `1 message placed on hold: ${id}\n`);
    const wrong = await queue('hold', '--certificate', 'alice@example.com');
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /--certificate "alice@example\.com": not a SHA-256 fingerprint or pin/);
  } finally {
    await revokeAlice(false);
  }
});
