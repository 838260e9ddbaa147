/**
 * What a reload does around its swap is honest about which generation runs. A listener's TLS settings change all or nothing. smtp-server's updateSecureContext merged the new options and
 * emptied its context map before OpenSSL read them: a refusal there left the listener without a context, and every
 * later handshake failed. And a reload applied them after swapping in the new generation, so a refusal failed the
 * reload with the new generation in force (reported as reloaded under postern serve). Now what OpenSSL refuses
 * fails the reload before the swap, every listener keeping its certificate. Real TLS handshakes with the listeners
 * tell which certificate each presents; OpenSSL's refusal is real (a key that is no key, given to the real method).
 * And a step after the swap that throws (what the swap does besides putting the generation in force, passing the
 * outcome on: under postern serve a worker's answer to its supervisor) failed the reload with the new generation in
 * force, and left the content recorded as the old one's (the supervisor's convergence view): now each such step is a
 * warning of its own, and the reload stands.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { loadAuthority, issueServerCertificate } from '../../engine/certificates/index.ts';
import { PosternServer } from '../../engine/smtp/postern-server.ts';

/** The fingerprint of the certificate `listener` presents to a new STARTTLS handshake. */
async function presented(s: TestServer, listener: string, ca: string): Promise<string> {
  const c = await SmtpTestClient.connect(s.port(listener));
  try {
    await c.read();
    await c.command('EHLO x.example');
    const tls = await c.starttls({ ca, servername: 'localhost' });
    return new X509Certificate(tls.getPeerCertificate(false).raw).fingerprint256;
  } finally {
    c.destroy();
  }
}

test('OpenSSL refusing a listener\'s new TLS settings: the listener keeps its context, and a reload fails before the swap with every listener as it was', { timeout: 120_000 }, async () => {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const files = { 'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8') };
  const s = await startTestServer({
    files,
    config: `
listeners:
  - { name: a, listen: 127.0.0.1:0, tls: { mode: starttls, cert: ./server.crt, key: ./server.key }, limits: { greetingDelayMs: 0 } }
  - { name: b, listen: 127.0.0.1:0, tls: { mode: starttls, cert: ./server.crt, key: ./server.key }, limits: { greetingDelayMs: 0 } }
`,
  });
  try {
    const old = new X509Certificate(files['server.crt']).fingerprint256;
    assert.equal(await presented(s, 'a', ca), old);

    // The method alone: a key OpenSSL cannot read. The listener's handshakes go on with the context it had.
    const a = s.servers.get('a')!;
    assert.throws(() => a.updateSecureContext({ key: 'not a key' }));
    assert.equal(await presented(s, 'a', ca), old, 'listener a still hands out its certificate');
    assert.notEqual((a.options as { key?: unknown }).key, 'not a key', 'its options as they were');

    // A reload whose second listener's settings OpenSSL refuses (its key made unreadable on the way in).
    const b = s.servers.get('b')!;
    b.updateSecureContext = (options) => PosternServer.prototype.updateSecureContext.call(b, { ...options, key: 'not a key' });
    const authority = await loadAuthority(ca, await readFile(pki.ca.key, 'utf8'));
    const next = await issueServerCertificate(authority, { commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], keyType: 'ecdsa' });
    await writeFile(join(s.dir, 'server.crt'), next.cert);
    await writeFile(join(s.dir, 'server.key'), next.key);
    const serial = s.runtime.generation.serial;
    const refused = await s.reloader.reload('test');
    assert.equal(refused.ok, false, 'the reload failed');
    assert.match(refused.errors.join('\n'), /^listener b: OpenSSL refused its TLS settings, which stay as they were: /m);
    assert.equal(s.runtime.generation.serial, serial, 'the running generation stays in force');
    assert.equal(await presented(s, 'a', ca), old, 'listener a, changed first, was given its settings back');
    assert.equal(await presented(s, 'b', ca), old, 'listener b kept its own');

    // OpenSSL taking them: both listeners change. (The same inputs as a refused reload are not built again: the
    // certificate file gets its CA appended, as a full chain.)
    delete (b as { updateSecureContext?: unknown }).updateSecureContext;
    await writeFile(join(s.dir, 'server.crt'), next.cert + ca);
    const reloaded = await s.reloader.reload('test');
    assert.equal(reloaded.ok, true, reloaded.errors.join('\n'));
    const rotated = new X509Certificate(next.cert).fingerprint256;
    assert.equal(await presented(s, 'a', ca), rotated);
    assert.equal(await presented(s, 'b', ca), rotated);
  } finally {
    await s.stop();
  }
});

test('a step after the swap that throws: the new generation is in force and the reload stands, the failure a warning of its own', { timeout: 120_000 }, async () => {
  const s = await startTestServer({ config: 'listeners:\n  - { name: a, listen: 127.0.0.1:0, tls: { mode: none } }\n' });
  const stopTelling = s.reloader.onReload(() => { throw new Error('the channel to the supervisor is closed'); });
  try {
    const serial = s.runtime.generation.serial;
    const reloads = s.reloader.status.data.reloads;
    const digest = s.reloader.state().digest;
    // The queue runner told of the new generation (the last thing the swap does), throwing.
    s.queue!.reconfigured = () => { throw new Error('the queue runner could not be told'); };
    const mark = s.logs.length;
    await writeFile(join(s.dir, 'postern.yaml'), `${await readFile(join(s.dir, 'postern.yaml'), 'utf8')}# edited\n`);
    const outcome = await s.reloader.reload('SIGHUP');
    assert.deepEqual([outcome.ok, outcome.errors], [true, []]);
    assert.ok(s.runtime.generation.serial > serial, 'the new generation is in force');
    assert.deepEqual([s.reloader.status.data.lastError, s.reloader.status.data.reloads > reloads], [null, true], 'status: reloaded, not refused');
    assert.notEqual(s.reloader.state().digest, digest, 'the content in force is recorded as the new one');
    const warned = s.logs.slice(mark).filter((l) => l.level === 40).map((l) => String(l.msg));
    assert.ok(warned.some((m) => /^reloaded: generation \d+ is in force, but what its swap does besides .* failed: the queue runner could not be told$/.test(m)), warned.join('\n'));
    assert.ok(warned.some((m) => /could not be passed on \(the channel to the supervisor is closed\); the reload stands all the same$/.test(m)), warned.join('\n'));
    // Nothing left to do: the inputs on disk are the ones in force (a change would be built again).
    delete (s.queue as { reconfigured?: unknown }).reconfigured;
    assert.equal((await s.reloader.reload('change')).changed, false);
  } finally {
    stopTelling();
    await s.stop();
  }
});
