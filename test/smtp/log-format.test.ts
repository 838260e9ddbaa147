// Log lines as an administrator reads them: ISO-8601 times; smtp-server's own per-connection lines below
// info (Postern logs the facts itself); a client's failed TLS handshake at info with its reason and no
// stack trace; `log.format: pretty` for a terminal.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Worker } from 'node:worker_threads';
import tls from 'node:tls';
import { Writable } from 'node:stream';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { closed, until } from '../helpers/wait.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { metrics } from '../../engine/metrics/metrics.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';

let pki: TestPki;
let s: TestServer;
before(async () => {
  pki = await makeTestPki();
  s = await startTestServer({
    config: configYaml({ listeners: [
      testListener('mx', { tls: testServerTls(pki) }),
      testListener('smtps', { tls: testServerTls(pki, { mode: 'implicit', clientCertificates: 'request' }) }),
    ] }),
  });
});
after(() => s?.stop());

test('times are ISO-8601; smtp-server lines are below info', async () => {
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.hello();
  await c.quit();
  assert.ok(s.logs.length > 0);
  for (const line of s.logs) assert.match(String(line.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  const smtpAtInfo = s.logs.filter((l) => l.component === 'smtp' && Number(l.level) >= 30);
  assert.deepEqual(smtpAtInfo.map((l) => l.msg), []);
  assert.ok(s.logs.some((l) => l.component === 'smtp' && l.level === 20), 'they are still there at debug');
});

test('a client that fails the TLS handshake is logged at info with the reason, without a stack trace, and counted', async () => {
  const failures = async (): Promise<number> => (await metrics.tlsHandshakeFailures.get()).values.find((v) => v.labels.listener === 'mx')?.value ?? 0;
  const before = await failures();
  const socket = net.connect(s.port('mx'), '127.0.0.1');
  let received = '';
  socket.setEncoding('utf8').on('data', (d: string) => {
    received += d;
    if (received.startsWith('220 ') && !received.includes('EHLO sent')) { received += 'EHLO sent'; socket.write('EHLO client.example\r\n'); }
    if (received.includes('250 ') && !received.includes('STARTTLS sent')) { received += 'STARTTLS sent'; socket.write('STARTTLS\r\n'); }
    if (received.includes('220 2.0.0')) socket.write('this is not a TLS ClientHello\r\n\r\n');
  });
  await new Promise((resolve) => socket.once('close', resolve));
  const lines = s.logs.filter((l) => (l.clientError || l.err) && Number(l.level) >= 30);
  assert.equal(lines.length, 1, 'the failure is logged once at info or above');
  for (const l of lines) {
    assert.equal(l.level, 30, JSON.stringify(l));
    assert.equal(l.err, undefined, 'no error object (pino would print its stack)');
    assert.match(String((l.clientError as { message: string }).message), /wrong version|SSL|TLS|packet/i);
  }
  assert.equal(await failures(), before + 1);
});

// smtp-server reports an implicit TLS listener's failed handshake with the client's address in err.meta only
// (STARTTLS's in err.remoteAddress): each one was logged as a server fault, `listener error` at error level
// with a stack trace, and not counted. A client offering TLS 1.1, or a client-certificate chain over
// OpenSSL's 100 KB, could write error lines at will.
test('implicit TLS: a client that fails the handshake is logged at info with its address, without a stack trace, and counted', async () => {
  const failures = async (): Promise<number> => (await metrics.tlsHandshakeFailures.get()).values.find((v) => v.labels.listener === 'smtps')?.value ?? 0;
  const before = await failures();
  const logged = s.logs.length;
  const client = tls.connect({ port: s.port('smtps'), host: '127.0.0.1', maxVersion: 'TLSv1.1', minVersion: 'TLSv1', ciphers: 'DEFAULT:@SECLEVEL=0', rejectUnauthorized: false });
  client.on('error', () => undefined); // the server's protocol_version alert
  await closed(client);
  await until('the failure is logged', () => s.logs.slice(logged).some((l) => (l.clientError || l.err) && Number(l.level) >= 30));
  const lines = s.logs.slice(logged).filter((l) => (l.clientError || l.err) && Number(l.level) >= 30);
  assert.equal(lines.length, 1, 'the failure is logged once at info or above');
  const [line] = lines;
  assert.equal(line!.level, 30, JSON.stringify(line));
  assert.equal(line!.err, undefined, 'no error object (pino would print its stack)');
  assert.equal(line!.client, '127.0.0.1');
  assert.match(String((line!.clientError as { message: string }).message), /unsupported protocol/i);
  assert.equal(await failures(), before + 1);
});

const asleep = new Int32Array(new SharedArrayBuffer(4));

/**
 * A client on its own thread that connects and resets (RST) at once, `first` written before the reset, while this
 * thread's event loop (the server's) is held: the server accepts a connection already reset, whose address the
 * kernel no longer gives (getpeername: ENOTCONN), as a loaded server accepts a scanner that came and went.
 */
async function resetWhileHeld(port: number, first: string): Promise<void> {
  const done = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(`
    const net = require('node:net');
    const { workerData: { port, first, done } } = require('node:worker_threads');
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.on('connect', () => { if (first) socket.write(first); setTimeout(() => socket.resetAndDestroy(), 50); });
    socket.on('close', () => { Atomics.store(done, 0, 1); Atomics.notify(done, 0); });
  `, { eval: true, workerData: { port, first, done } });
  // Held (blocked, not spinning) until the client has reset: no socket of the server is read meanwhile. The thread
  // starts, connects (the kernel completes the handshake) and resets without this one.
  assert.notEqual(Atomics.wait(done, 0, 0, 60_000), 'timed-out', 'the client thread connected and reset');
  Atomics.wait(asleep, 0, 0, 100); // the RST in before the server reads
  await worker.terminate();
}

test('implicit TLS: a client that resets before its handshake, its address gone with it, is logged at info as the client\'s, not as a listener error', async () => {
  const logged = s.logs.length;
  for (const first of ['', 'EHLO plaintext.example\r\n']) await resetWhileHeld(s.port('smtps'), first);
  const clientLines = (): Array<Record<string, unknown>> => s.logs.slice(logged).filter((l) => l.msg === 'client connection error');
  await until('both resets are logged', () => clientLines().length === 2);
  const errors = s.logs.slice(logged).filter((l) => Number(l.level) >= 50);
  assert.deepEqual(errors.map((l) => l.msg), [], 'no error-level line (no "listener error" with a stack trace)');
  for (const line of clientLines()) {
    assert.equal(line.level, 30, JSON.stringify(line));
    assert.equal(line.err, undefined, 'no error object (pino would print its stack)');
    assert.deepEqual([line.decision, line.stage, line.listener, line.client], ['reject', 'CONNECT', 'smtps', null]);
  }
});

test('log.format pretty writes readable lines, not JSON', () => {
  let out = '';
  const sink = new Writable({ write(chunk: Buffer, _e, cb) { out += chunk.toString(); cb(); } });
  const log = createLogger('info', sink, 'pretty');
  log.info({ cid: 'abc' }, 'message spooled');
  assert.match(out, /INFO.*message spooled/);
  assert.match(out, /cid: "abc"/);
  assert.throws(() => JSON.parse(out));
});
