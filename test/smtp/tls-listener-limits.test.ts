// Implicit TLS listeners against clients that never handshake, and how refusals end a TLS session.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { once } from 'node:events';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { closed, until } from '../helpers/wait.ts';
import type { LocalConnectionCounter } from '../../engine/smtp/postern-server.ts';

let pki: TestPki;
let ca: string;
let server: TestServer;

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  const tlsOn = (extra = '') => `{ mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}${extra} }`;
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: crowded
    listen: 127.0.0.1:0
    tls: ${tlsOn()}
    limits: { greetingDelayMs: 0, maxConnections: 9, maxConnectionsPerIp: 3, tlsHandshakeTimeoutMs: 600000 }
  - name: quick
    listen: 127.0.0.1:0
    tls: ${tlsOn()}
    limits: { greetingDelayMs: 0, tlsHandshakeTimeoutMs: 1000 }
  - name: require
    listen: 127.0.0.1:0
    tls: ${tlsOn(`, clientCertificates: require, caFiles: [${pki.ca.cert}]`)}
    limits: { greetingDelayMs: 0 }
  - name: idle
    listen: 127.0.0.1:0
    tls: ${tlsOn()}
    limits: { greetingDelayMs: 0, socketTimeoutMs: 300 }
  - name: open
    listen: 127.0.0.1:0
    tls: ${tlsOn()}
    limits: { greetingDelayMs: 0 }
  - name: starttls-quick
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    limits: { greetingDelayMs: 0, tlsHandshakeTimeoutMs: 1000 }
  - name: starttls
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }
`,
  });
});
after(() => server.stop());

/** A TCP connection that never says anything (no TLS ClientHello). */
async function silent(port: number): Promise<net.Socket> {
  const s = net.connect({ host: '127.0.0.1', port });
  s.on('error', () => undefined);
  await once(s, 'connect');
  return s;
}

const openFrom = (listener: string, ip: string): number =>
  (server.servers.get(listener)!.connectionCounter as LocalConnectionCounter).count(ip);

test('silent connections: beyond twice the per-IP limit closed before TLS; another address still gets in', { timeout: 60_000 }, async () => {
  const port = server.port('crowded');
  // As many as the whole listener takes: all from 127.0.0.1, none of them starting a handshake.
  const sockets = await Promise.all(Array.from({ length: 9 }, () => silent(port)));
  const closed = sockets.map((s) => new Promise<void>((resolve) => s.once('close', () => resolve())));
  let closedCount = 0;
  for (const c of closed) void c.then(() => closedCount++);

  // Accepted after them (the kernel hands connections over in order): not locked out.
  const other = await SmtpTestClient.connect(port, { implicitTls: { ca }, localAddress: '127.0.0.2' });
  await other.hello();
  const reply = await other.sendMail('a@example.com', ['b@example.com']);
  assert.equal(reply.code, 250, reply.text);
  await other.quit();

  await until('three of nine closed', () => closedCount >= 3);
  const refused = server.logs.filter((l) => l.msg === 'too many connections from this address, closed before TLS');
  assert.equal(refused.length, 3);
  for (const l of refused) assert.deepEqual([l.decision, l.stage, l.client, l.reason], ['reject', 'CONNECT', '127.0.0.1', 'limits.maxConnectionsPerIp: over twice the limit (closed before TLS)']);
  await until('the listener counts six from 127.0.0.1', () => openFrom('crowded', '127.0.0.1') === 6);
  assert.equal(sockets.filter((s) => !s.destroyed).length, 6, 'the six within twice the limit are still open');

  for (const s of sockets.slice(0, 6)) s.destroy();
  await until('every count released', () => openFrom('crowded', '127.0.0.1') === 0 && openFrom('crowded', '127.0.0.2') === 0);
});

test('a client over the per-IP limit of an implicit TLS listener reads 421 4.7.0 and TLS ends properly', { timeout: 60_000 }, async () => {
  const port = server.port('crowded');
  const held = await Promise.all(Array.from({ length: 3 }, () => SmtpTestClient.connect(port, { implicitTls: { ca } })));
  for (const c of held) assert.equal((await c.read()).code, 220);
  const node = await tlsEnding(port, '');
  assert.equal(node.text, '421 4.7.0 Too many connections from your address\r\n');
  assert.equal(node.ending, 'end');
  const openssl = await sClient(port, '');
  assert.match(openssl.out, /421 4\.7\.0 Too many connections from your address/);
  assert.doesNotMatch(openssl.out, /error|unexpected eof/i);
  assert.equal(openssl.status, 0);
  for (const c of held) await c.quit();
});

test('STARTTLS listener: a connection over the per-IP limit gets 421 4.7.0 in clear; a closed one frees its place', { timeout: 60_000 }, async () => {
  const port = server.port('starttls');
  const held = await Promise.all([1, 2].map(() => SmtpTestClient.connect(port)));
  for (const c of held) assert.equal((await c.read()).code, 220);
  const third = await SmtpTestClient.connect(port);
  assert.equal((await third.read()).text, '421 4.7.0 Too many connections from your address');
  assert.ok(await third.waitClosed());
  await held[0]!.quit();
  await until('one from 127.0.0.1 left', () => openFrom('starttls', '127.0.0.1') === 1);
  const next = await SmtpTestClient.connect(port);
  assert.equal((await next.hello({ starttls: { ca } })).code, 250);
  await next.quit();
  await held[1]!.quit();
  await until('a session upgraded with STARTTLS is uncounted at its close too', () => openFrom('starttls', '127.0.0.1') === 0);
});

test('a connection that never completes its TLS handshake is closed after tlsHandshakeTimeoutMs', { timeout: 60_000 }, async () => {
  const s = await silent(server.port('quick'));
  await closed(s); // the idle timeout (5 minutes) would be far beyond the test's timeout
  await until('count released', () => openFrom('quick', '127.0.0.1') === 0);
  // A client that does handshake is not cut off by that timeout.
  const c = await SmtpTestClient.connect(server.port('quick'), { implicitTls: { ca } });
  await c.hello();
  // Proof that the timeout has passed for it too: a silent connection opened after it is cut off by now.
  await closed(await silent(server.port('quick')));
  assert.equal((await c.command('NOOP')).code, 250);
  await c.quit();
});

test('implicit TLS: a handshake sent a byte at a time is closed after tlsHandshakeTimeoutMs too', { timeout: 60_000 }, async () => {
  const s = net.connect({ host: '127.0.0.1', port: server.port('quick') });
  s.on('error', () => undefined);
  await once(s, 'connect');
  // As in the STARTTLS case below: a ClientHello's record header, then a byte every 100 ms, each restarting
  // the idle timeout; only a deadline on the handshake itself closes it.
  s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]));
  const drip = setInterval(() => { if (!s.destroyed) s.write(Buffer.from([0x01])); }, 100);
  try {
    await closed(s);
  } finally {
    clearInterval(drip);
  }
  await until('count released', () => openFrom('quick', '127.0.0.1') === 0);
});

test('after STARTTLS, a handshake sent a byte at a time is closed after tlsHandshakeTimeoutMs; a real one is not', { timeout: 60_000 }, async () => {
  const c = await SmtpTestClient.connect(server.port('starttls-quick'));
  await c.read();
  await c.command('EHLO dripper.example');
  assert.equal((await c.command('STARTTLS')).code, 220);
  // A TLS record header announcing 512 bytes of ClientHello, then one byte every 100 ms: each byte restarts
  // the idle timeout (5 minutes); only a deadline on the handshake ends it.
  c.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]));
  const drip = setInterval(() => { if (!c.socket.destroyed) c.socket.write(Buffer.from([0x01])); }, 100);
  try {
    assert.ok(await c.waitClosed(30_000), 'closed');
  } finally {
    clearInterval(drip);
  }
  const ok = await SmtpTestClient.connect(server.port('starttls-quick'));
  await ok.hello({ starttls: { ca } });
  await new Promise((r) => setTimeout(r, 1500)); // past the handshake deadline: an upgraded session is not cut
  assert.equal((await ok.command('NOOP')).code, 250);
  await ok.quit();
});

/** What a Node TLS client sees after its last data: 'end' (the server closed TLS properly) or an error. */
async function tlsEnding(port: number, send: string, read = 1): Promise<{ text: string; ending: string }> {
  const s = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' });
  s.setEncoding('utf8');
  let text = '';
  let ending = 'close without end';
  s.on('data', (d: string) => {
    text += d;
    if (send && text.split('\r\n').length - 1 === read) s.write(send);
  });
  s.on('end', () => { if (ending === 'close without end') ending = 'end'; });
  s.on('error', (err: NodeJS.ErrnoException) => { ending = `error ${err.code}`; });
  await closed(s);
  return { text, ending };
}

test('421 refusals over implicit TLS: the reply arrives and TLS is closed properly (Node client)', { timeout: 60_000 }, async () => {
  const refused = await tlsEnding(server.port('require'), '');
  assert.match(refused.text, /^421 4\.7\.1 No client certificate presented\r\n$/);
  assert.equal(refused.ending, 'end');
  const timedOut = await tlsEnding(server.port('idle'), '');
  assert.match(timedOut.text, /^220 .*\r\n421 4\.4\.2 .*Timeout - closing connection\r\n$/);
  assert.equal(timedOut.ending, 'end');
  const errors = await tlsEnding(server.port('open'), 'EHLO x.example\r\n' + 'BOGUS\r\n'.repeat(20)); // limits.maxErrors
  assert.match(errors.text, /421 4\.7\.0 \S+ Error: too many errors\r\n$/);
  assert.equal(errors.ending, 'end');
});

/** openssl s_client as the client: its output and exit status. */
function sClient(port: number, input: string): Promise<{ out: string; status: number | null }> {
  return new Promise((resolve, reject) => {
    const p = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-CAfile', pki.ca.cert, '-quiet'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    p.on('error', reject);
    p.on('close', (status) => resolve({ out, status }));
    // stdin stays open: s_client must end because the server closed the session, not because of EOF.
    if (input) p.stdin.write(input);
  });
}

test('421 refusals over implicit TLS: openssl s_client reads the text and exits 0', { timeout: 60_000 }, async () => {
  const refused = await sClient(server.port('require'), '');
  assert.match(refused.out, /421 4\.7\.1 No client certificate presented/);
  assert.doesNotMatch(refused.out, /error|unexpected eof/i);
  assert.equal(refused.status, 0);
  const timedOut = await sClient(server.port('idle'), '');
  assert.match(timedOut.out, /421 4\.4\.2 .*Timeout - closing connection/);
  assert.doesNotMatch(timedOut.out, /error|unexpected eof/i);
  assert.equal(timedOut.status, 0);
});
