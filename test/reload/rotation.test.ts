// Certificate rotation: replace the server certificate and the CA/CRL files on a running server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile, copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { loadAuthority, issueServerCertificate, createCrl } from '../../engine/certificates/index.ts';

/** A STARTTLS listener requiring client certificates, its certificate, key, CA and CRL copied into its folder (to be replaced). */
async function startRotatingServer() {
  const pki = await makeTestPki();
  const files = {
    'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8'),
    'ca.crt': await readFile(pki.ca.cert, 'utf8'), 'ca.crl': await readFile(pki.crl, 'utf8'),
  };
  const s = await startTestServer({
    files,
    config: `
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ./server.crt, key: ./server.key, clientCertificates: require, caFiles: [./ca.crt], crlFiles: [./ca.crl] }
    limits: { greetingDelayMs: 0 }
`,
  });
  const ca = files['ca.crt'];
  const bob = { cert: await readFile(pki.clients.bob.cert, 'utf8'), key: await readFile(pki.clients.bob.key, 'utf8') };
  return { pki, files, s, ca, bob };
}

test('new handshakes use the rotated server certificate, CA and CRL; a newly revoked certificate is refused', async () => {
  const { pki, files, s, ca, bob } = await startRotatingServer();
  const handshake = async (): Promise<{ serverFingerprint: string; reply: string }> => {
    const c = await SmtpTestClient.connect(s.port('sub'));
    await c.read();
    await c.command('EHLO x.example');
    const tls: TLSSocket = await c.starttls({ ca, ...bob });
    const fp = new X509Certificate(tls.getPeerCertificate(false).raw).fingerprint256;
    // The first reply tells: a 421 the server sent right after the handshake, or the answer to EHLO.
    const reply = await c.command('EHLO x.example');
    const text = reply.code === 421 ? reply.text : reply.lines[0]!;
    c.destroy();
    return { serverFingerprint: fp, reply: text };
  };
  try {
    // before: bob is trusted
    const before = await handshake();
    assert.match(before.reply, /^250-/);
    // rotate: a new server certificate (same CA), and a CRL that now revokes bob
    const authority = await loadAuthority(ca, await readFile(pki.ca.key, 'utf8'));
    const server2 = await issueServerCertificate(authority, { commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], keyType: 'ecdsa' });
    const reloaded = new Promise((resolve) => s.reloader.onReload(resolve));
    await writeFile(join(s.dir, 'server.key.new'), server2.key);
    await writeFile(join(s.dir, 'server.crt'), server2.cert + ca);
    await copyFile(join(s.dir, 'server.key.new'), join(s.dir, 'server.key'));
    await writeFile(join(s.dir, 'ca.crl'), await createCrl(authority, [{ serial: pki.clients.revoked.serial }, { serial: pki.clients.bob.serial }]));
    const outcome = await reloaded as { ok: boolean; errors: string[] };
    assert.equal(outcome.ok, true, outcome.errors.join('\n'));
    const after = await handshake();
    assert.notEqual(after.serverFingerprint, before.serverFingerprint, 'new server certificate served');
    assert.equal(after.serverFingerprint, new X509Certificate(server2.cert).fingerprint256);
    assert.match(after.reply, /^421 4\.7\.1 Client certificate not trusted \(revoked\)/);
  } finally { await s.stop(); }
});

test('a handshake begun before a CRL reload (STARTTLS answered, no ClientHello yet) is verified with the new CRL', async () => {
  const { pki, files, s, ca, bob } = await startRotatingServer();
  try {
    const c = await SmtpTestClient.connect(s.port('sub'));
    await c.read();
    await c.command('EHLO x.example');
    // The server made this connection's TLS socket at STARTTLS, with the context of then; bob is revoked before the handshake.
    await c.starttls({ ca, ...bob }, async () => {
      const reloaded = new Promise((resolve) => s.reloader.onReload(resolve));
      const authority = await loadAuthority(ca, await readFile(pki.ca.key, 'utf8'));
      await writeFile(join(s.dir, 'ca.crl'), await createCrl(authority, [{ serial: pki.clients.revoked.serial }, { serial: pki.clients.bob.serial }]));
      const outcome = await reloaded as { ok: boolean; errors: string[] };
      assert.equal(outcome.ok, true, outcome.errors.join('\n'));
    });
    const reply = await c.command('EHLO x.example');
    assert.match(reply.text, /^421 4\.7\.1 Client certificate not trusted \(revoked\)/);
    c.destroy();
  } finally { await s.stop(); }
});

test('a key that does not match the new certificate is refused and the old pair stays in force', async () => {
  const pki = await makeTestPki();
  const files = { 'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8') };
  const s = await startTestServer({
    files,
    config: `
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ./server.crt, key: ./server.key }
`,
  });
  try {
    const reloaded = new Promise((resolve) => s.reloader.onReload(resolve));
    await writeFile(join(s.dir, 'server.key'), await readFile(pki.clients.alice.key, 'utf8'));
    const outcome = await reloaded as { ok: boolean; errors: string[] };
    assert.equal(outcome.ok, false);
    assert.match(outcome.errors.join('\n'), /server\.key: private key does not match certificate/);
    const c = await SmtpTestClient.connect(s.port('sub'), { implicitTls: { ca: await readFile(pki.ca.cert, 'utf8') } });
    assert.equal((await c.read()).code, 220);
    await c.quit();
  } finally { await s.stop(); }
});

test('tls.mode: to implicit waits for a restart and the listener goes on as it was; starttls to none applies at once', async () => {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const s = await startTestServer({
    files: { 'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8') },
    config: `
localDomains: [example.com]
listeners:
  - name: sub
    listen: 127.0.0.1:0
    requireTls: true
    tls: { mode: starttls, cert: ./server.crt, key: ./server.key }
    limits: { greetingDelayMs: 0 }
`,
  });
  const file = join(s.dir, 'postern.yaml');
  const edit = async (from: string, to: string): Promise<{ ok: boolean; pendingRestart: string[] }> => {
    const reloaded = new Promise<{ ok: boolean; pendingRestart: string[] }>((resolve) => s.reloader.onReload(resolve));
    await writeFile(file, (await readFile(file, 'utf8')).replace(from, to));
    return reloaded;
  };
  /** A plain connection: STARTTLS, then a transaction over TLS. */
  const overStarttls = async (): Promise<number> => {
    const c = await SmtpTestClient.connect(s.port('sub'));
    assert.equal((await c.read()).code, 220); // it was 451 and closed: the plain socket was taken for TLS
    assert.match((await c.command('EHLO x.example')).text, /250-STARTTLS/);
    await c.starttls({ ca });
    await c.command('EHLO x.example');
    const code = (await c.command('MAIL FROM:<a@x.example>')).code;
    c.destroy();
    return code;
  };
  try {
    assert.equal(await overStarttls(), 250);
    const implicit = await edit('mode: starttls', 'mode: implicit');
    assert.deepEqual(implicit.pendingRestart, ['listener sub changes tls.mode starttls → implicit']);
    assert.equal(await overStarttls(), 250, 'the listener serves as it started until the restart');
    const back = await edit('mode: implicit', 'mode: starttls');
    assert.deepEqual(back.pendingRestart, []);
    assert.equal(await overStarttls(), 250);
    const none = await edit('requireTls: true\n    tls: { mode: starttls', 'requireTls: false\n    tls: { mode: none');
    assert.deepEqual(none.pendingRestart, [], 'none and starttls share a socket: the change applies at the reload');
    const c = await SmtpTestClient.connect(s.port('sub'));
    await c.read();
    assert.doesNotMatch((await c.command('EHLO x.example')).text, /STARTTLS/);
    assert.equal((await c.command('MAIL FROM:<a@x.example>')).code, 250);
    c.destroy();
  } finally { await s.stop(); }
});
