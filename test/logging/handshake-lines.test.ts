// A TLS handshake cut off by limits.tlsHandshakeTimeoutMs is the server closing a connection without a reply: its
// line has the fields of such a decision (decision, stage, client, reason naming the setting, reply: null), after
// STARTTLS (with the session id) and on implicit TLS, so `jq 'select(.decision)'` finds it. Before, the STARTTLS one
// had neither decision nor reason nor listener, and the implicit one was a bare `client connection error`. A
// handshake the client breaks is such a line too (every session that ends at a refusal or a failed step has one): it
// was a bare `client connection error`, after STARTTLS without the session's id at first.
// Real server, real sockets.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';

type Line = Record<string, unknown>;
let s: TestServer;
before(async () => {
  const pki = await makeTestPki();
  s = await startTestServer({
    config: configYaml({
      hostname: 'mx.test', localDomains: ['example.test'],
      listeners: [
        testListener('hsstarttls', { tls: testServerTls(pki), limits: { tlsHandshakeTimeoutMs: 300 } }),
        testListener('hsimplicit', { tls: { ...testServerTls(pki), mode: 'implicit' }, limits: { tlsHandshakeTimeoutMs: 300 } }),
      ],
    }),
  });
});
after(() => s?.stop());

const atInfo = (from: number): Line[] => s.logs.slice(from).filter((l) => Number(l.level) >= 30);

test('STARTTLS, then no handshake: one line with the session id, decision, stage, reason and no reply', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const c = await SmtpTestClient.connect(s.port('hsstarttls'));
  await c.read();
  await c.command('EHLO client.example');
  assert.equal((await c.command('STARTTLS')).code, 220);
  assert.ok(await c.waitClosed(60_000));
  await until('its line', () => atInfo(mark).some((l) => l.decision !== undefined), { timeoutMs: 30_000 });
  const lines = atInfo(mark);
  assert.equal(lines.length, 1, JSON.stringify(lines));
  const line = lines[0]!;
  assert.deepEqual([line.decision, line.stage, line.client, line.listener, line.reply], ['reject', 'STARTTLS', '127.0.0.1', 'hsstarttls', null]);
  assert.match(String(line.reason), /^limits\.tlsHandshakeTimeoutMs/);
  assert.match(String(line.cid), /^\w+$/);
});

test('implicit TLS, no ClientHello: one line with decision, stage, reason and no reply', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const raw = net.connect(s.port('hsimplicit'), '127.0.0.1');
  raw.on('error', () => undefined);
  raw.write(Buffer.from([0x16, 0x03, 0x01])); // the start of a record, then nothing
  await new Promise((r) => raw.once('close', r));
  await until('its line', () => atInfo(mark).length > 0, { timeoutMs: 30_000 });
  const lines = atInfo(mark);
  assert.equal(lines.length, 1, JSON.stringify(lines));
  const line = lines[0]!;
  assert.deepEqual([line.decision, line.stage, line.client, line.listener, line.reply], ['reject', 'CONNECT', '127.0.0.1', 'hsimplicit', null]);
  assert.match(String(line.reason), /^limits\.tlsHandshakeTimeoutMs/);
});

test('a handshake the client breaks after STARTTLS: one decision line of stage STARTTLS, with the session\'s id', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const c = await SmtpTestClient.connect(s.port('hsstarttls'));
  await c.read();
  await c.command('EHLO client.example');
  assert.equal((await c.command('FOO')).code, 500); // a refusal: its line gives the session id
  assert.equal((await c.command('STARTTLS')).code, 220);
  c.socket.write('this is not TLS\r\n');
  assert.ok(await c.waitClosed(60_000));
  await until('its line', () => atInfo(mark).some((l) => l.msg === 'client connection error'), { timeoutMs: 30_000 });
  const [refusal, failed, ...more] = atInfo(mark).filter((l) => l.decision !== undefined);
  assert.equal(refusal!.stage, 'UNKNOWN');
  assert.deepEqual(more, [], 'one line for the handshake');
  assert.deepEqual([failed!.msg, failed!.decision, failed!.stage, failed!.client, failed!.listener, failed!.reply, failed!.reason],
    ['client connection error', 'reject', 'STARTTLS', '127.0.0.1', 'hsstarttls', null, 'the TLS handshake after STARTTLS failed (closed)']);
  assert.equal(failed!.cid, refusal!.cid, 'the session\'s id');
  assert.match(String((failed!.clientError as { code?: string }).code), /^ERR_SSL_/, 'what failed, for the operator');
  assert.equal(atInfo(mark).filter((l) => l.msg === 'client connection error').length, 1);
});

test('an implicit-TLS handshake the client breaks: one decision line of stage CONNECT', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const raw = net.connect(s.port('hsimplicit'), '127.0.0.1');
  raw.on('error', () => undefined);
  raw.write('EHLO this is not TLS\r\n');
  await new Promise((r) => raw.once('close', r));
  await until('its line', () => atInfo(mark).length > 0, { timeoutMs: 30_000 });
  const lines = atInfo(mark);
  assert.equal(lines.length, 1, JSON.stringify(lines));
  assert.deepEqual([lines[0]!.decision, lines[0]!.stage, lines[0]!.client, lines[0]!.listener, lines[0]!.reply, lines[0]!.reason],
    ['reject', 'CONNECT', '127.0.0.1', 'hsimplicit', null, 'the TLS handshake failed (closed)']);
});
