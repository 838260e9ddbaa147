// Slowloris: a client that sends a byte every now and then, never finishing its line. The idle timeout
// (socketTimeoutMs) restarts with every byte, so such a client kept its connection, and its slot under
// maxConnections and maxConnectionsPerIp, for as long as it liked: a few hundred of them fill a listener.
// Each line (a command, or a line of the message) must now be complete within socketTimeoutMs, as in Exim
// (smtp_receive_timeout) and Postfix (smtpd_per_record_deadline), and a whole message within dataTimeoutMs
// (sendmail's Timeout.datablock). The drippers below send every 200 ms, far within the idle timeout, until the
// server closes (a hang guard of a minute, not a timing).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';
import type { LocalConnectionCounter } from '../../engine/smtp/postern-server.ts';

const TIMEOUT_MS = 1500;
let server: TestServer;
let ca: string;

before(async () => {
  const pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: plain
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0, socketTimeoutMs: ${TIMEOUT_MS} }
  - name: slowdata
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0, dataTimeoutMs: ${TIMEOUT_MS} }
  - name: starttls
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    limits: { greetingDelayMs: 0, socketTimeoutMs: ${TIMEOUT_MS} }
`,
  });
});
after(() => server.stop());

/** Send `text` a byte every 200 ms, again and again, until the server closes the connection (or a minute passed). */
async function drip(c: SmtpTestClient, text: string): Promise<number> {
  const deadline = Date.now() + 60_000;
  let sent = 0;
  while (!c.closed && Date.now() < deadline) {
    if (!c.socket.destroyed) c.socket.write(text[sent % text.length]!);
    sent++;
    await sleep(200);
  }
  return sent;
}

function openFrom(listener: string): number {
  return (server.servers.get(listener)!.connectionCounter as LocalConnectionCounter).count('127.0.0.1');
}

async function closedBySlowLine(c: SmtpTestClient, listener: string, text: string): Promise<void> {
  const sent = await drip(c, text);
  assert.ok(c.closed, `the server kept a client that sent ${sent} bytes of one line, a byte every 200 ms`);
  assert.equal((await c.read()).text, '421 4.4.2 Timeout - closing connection');
  // Its slot is given back.
  await until(`no connection from 127.0.0.1 counted on ${listener}`, () => openFrom(listener) === 0);
}

test('a command sent a byte at a time is cut at socketTimeoutMs, 421 4.4.2, and its slot is freed', async () => {
  const c = await SmtpTestClient.connect(server.port('plain'));
  await c.hello();
  await closedBySlowLine(c, 'plain', 'NOOP');
  const line = server.logs.find((l) => l.decision === 'defer' && l.reason === 'limits.socketTimeoutMs' && l.listener === 'plain');
  assert.ok(line, 'a decision line names limits.socketTimeoutMs');
});

test('a message line sent a byte at a time in DATA is cut the same way, and nothing is spooled', async () => {
  const c = await SmtpTestClient.connect(server.port('plain'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.socket.write('Subject: slow\r\n\r\n'); // complete lines first: only the line being dripped counts
  await closedBySlowLine(c, 'plain', 'x');
  assert.deepEqual(await server.runtime.spool.list(), []);
});

// Dot-stuffed lines too: the deadline's look waits for the parser to go through what was read by then (smtp-server
// parses the rest of a chunk after each '..' line in a later turn), and no longer: a client still sending gains nothing.
for (const [kind, line] of [['', 'x\r\n'], [' (dot-stuffed)', '..x\r\n']] as const) test(`a message sent a whole${kind} line at a time, each in time, is cut at dataTimeoutMs: 421 4.4.2, nothing spooled, slot freed`, async () => {
  // Each line ends well within socketTimeoutMs (the default, minutes): only the DATA phase's own deadline ends it.
  const c = await SmtpTestClient.connect(server.port('slowdata'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.socket.write('Subject: slow\r\n\r\n');
  const sent = await drip(c, line);
  assert.ok(c.closed, `the server kept a client that sent ${sent} bytes of message in whole lines`);
  assert.equal((await c.read()).text, '421 4.4.2 Timeout - closing connection');
  await until('no connection from 127.0.0.1 counted on slowdata', () => openFrom('slowdata') === 0);
  assert.deepEqual(await server.runtime.spool.list(), []);
  const decision = server.logs.findLast((l) => l.decision === 'defer' && l.reason === 'limits.dataTimeoutMs');
  assert.ok(decision, 'a decision line names limits.dataTimeoutMs');
  assert.equal(decision.stage, 'DATA');
});

test('after STARTTLS, inside TLS, a dripped command is cut the same way', async () => {
  const c = await SmtpTestClient.connect(server.port('starttls'));
  await c.hello({ starttls: { ca } });
  await closedBySlowLine(c, 'starttls', 'EHLO slow.example');
});

test('complete lines are not cut: a session that outlives the deadline line by line goes on', async () => {
  const c = await SmtpTestClient.connect(server.port('plain'));
  await c.hello();
  // The line deadline restarts at each line end: three command lines each sent whole, spread over more than
  // one deadline by waiting for the server's reply in between (no wall-clock assertion: only that it answers).
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  c.socket.write('RCPT TO:<b@');
  await sleep(100);
  c.socket.write('example.com>\r\n');
  assert.equal((await c.read()).code, 250);
  const reply = await c.sendMail('a@example.com', ['b@example.com']);
  assert.equal(reply.code, 503, 'nested MAIL in the open transaction'); // proves the session is alive
  assert.equal((await c.command('RSET')).code, 250);
  assert.equal((await c.sendMail('a@example.com', ['b@example.com'])).code, 250);
  await c.quit();
});
