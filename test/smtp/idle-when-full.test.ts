// A full listener closed a connection for a newcomer only when some address held at least two more connections
// than the newcomer's (listener-room.ts), or when a message arrived below minDataRate. A botnet of maxConnections
// distinct addresses, each holding ONE connection idle after EHLO (or sending a command every ~290 s, just within
// socketTimeoutMs, or a NOOP in a loop), kept every other client out with `421 4.7.0 Too many connected clients,
// try again in a moment` for as long as it liked. Now, when that rule closes nobody, the connection idle longest
// in the command phase (one that never sent MAIL FROM first; junk commands are no activity) is closed for the
// newcomer once idle at least limits.idleWhenFullMs; never one receiving a message or waiting for its greeting.
//
// The clients wait out the idle time after reading their last reply (a lower bound on the idleness the server
// measured), and nothing asserts how long anything takes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';

const IDLE_MS = 300;
/** Past the idle time since the client read its last reply. */
const idleOut = (): Promise<void> => sleep(IDLE_MS * 1.5);

let server: TestServer;

const listener = (name: string, limits: string): string => `
  - name: ${name}
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { maxConnectionsPerIp: 1, minDataRate: 0, ${limits} }`;

before(async () => {
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:${listener('botnet', `greetingDelayMs: 0, maxConnections: 4, idleWhenFullMs: ${IDLE_MS}`)}${
  listener('prefer', `greetingDelayMs: 0, maxConnections: 4, idleWhenFullMs: ${IDLE_MS}`)}${
  listener('busy', `greetingDelayMs: 0, maxConnections: 4, idleWhenFullMs: ${IDLE_MS}`)}${
  listener('greeting', `greetingDelayMs: 1500, maxConnections: 1, idleWhenFullMs: ${IDLE_MS}`)}${
  listener('off', 'greetingDelayMs: 0, maxConnections: 2, idleWhenFullMs: 0')}
`,
  });
});
after(() => server.stop());

/** A greeted connection from `ip` that said EHLO. */
async function afterEhlo(name: string, ip: string): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port(name), { localAddress: ip });
  assert.equal((await c.read()).code, 220, c.transcript.join('\n'));
  assert.equal((await c.command('EHLO holder.example')).code, 250, c.transcript.join('\n'));
  return c;
}

async function mailFrom(c: SmtpTestClient): Promise<void> {
  assert.equal((await c.command('MAIL FROM:<a@sender.example>')).code, 250, c.transcript.join('\n'));
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250, c.transcript.join('\n'));
}

const open = (name: string): number => (server.servers.get(name) as unknown as { connections: Set<unknown> }).connections.size;
const idleLines = (name: string): Array<Record<string, unknown>> =>
  server.logs.filter((l) => l.listener === name && typeof l.reason === 'string' && l.reason.startsWith('limits.idleWhenFullMs: '));
const IDLE_CLOSED = /^421 4\.7\.0 \S+ Too many connected clients, this connection idle for [\d.]+ s is closed for another client$/;

test('a listener held full by distinct addresses, one idle connection each, greets a newcomer: the idlest is closed', { timeout: 30_000 }, async () => {
  const holders: SmtpTestClient[] = [];
  for (const ip of ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5']) holders.push(await afterEhlo('botnet', ip));
  await until('four open', () => open('botnet') === 4);
  await idleOut();

  const newcomer = await SmtpTestClient.connect(server.port('botnet'), { localAddress: '127.0.0.6' });
  assert.equal((await newcomer.read()).code, 220, `the newcomer is let in: ${newcomer.transcript.join('\n')}`);
  await until('one holder closed', () => holders.some((c) => c.closed));
  const closed = holders.filter((c) => c.closed);
  assert.equal(closed.length, 1);
  assert.equal(closed[0], holders[0], 'the one idle longest');
  assert.match((await closed[0]!.read()).text, IDLE_CLOSED, closed[0]!.transcript.join('\n'));
  const lines = idleLines('botnet');
  assert.equal(lines.length, 1, JSON.stringify(lines));
  assert.equal(lines[0]!.client, '127.0.0.2');
  assert.match(String(lines[0]!.reason), /^limits\.idleWhenFullMs: idle [\d.]+ s, never a MAIL FROM, while the listener was full \(at least 300 ms\): closed for another client$/);
  assert.equal((await newcomer.command('EHLO newcomer.example')).code, 250, 'the newcomer is served');
  for (const c of [...holders, newcomer]) c.destroy();
});

test('the one closed first never sent MAIL FROM (NOOPs are no activity), then the one that did, idle longest', { timeout: 30_000 }, async () => {
  const transaction = await afterEhlo('prefer', '127.0.0.2'); // idle longest, but mid-transaction
  await mailFrom(transaction);
  const nooper = await afterEhlo('prefer', '127.0.0.3'); // never a MAIL FROM, a NOOP every 50 ms
  const delivered = await afterEhlo('prefer', '127.0.0.4'); // a message accepted, then idle
  assert.equal((await delivered.sendMail('a@sender.example', ['b@example.com'])).code, 250, delivered.transcript.join('\n'));
  const quiet = await afterEhlo('prefer', '127.0.0.5'); // never a MAIL FROM, idle since its EHLO
  let nooping = true;
  const loop = (async () => {
    while (nooping && !nooper.closed) {
      nooper.socket.write('NOOP\r\n');
      await sleep(50);
    }
  })();
  await idleOut();

  const newcomers: SmtpTestClient[] = [];
  const admit = async (ip: string): Promise<void> => {
    const c = await SmtpTestClient.connect(server.port('prefer'), { localAddress: ip });
    newcomers.push(c);
    assert.equal((await c.read()).code, 220, c.transcript.join('\n'));
    // Into a transaction at once: a newcomer never outranks the holders below, however late the next one comes.
    assert.equal((await c.command('EHLO newcomer.example')).code, 250);
    await mailFrom(c);
  };
  await admit('127.0.0.6');
  await until('the NOOP loop closed', () => nooper.closed);
  nooping = false;
  await loop;
  await admit('127.0.0.7');
  await until('the quiet one closed', () => quiet.closed);
  await admit('127.0.0.8');
  await until('the transaction idle longest closed', () => transaction.closed);
  assert.equal(delivered.closed, false, delivered.transcript.join('\n'));
  assert.match((await transaction.read()).text, IDLE_CLOSED);
  assert.deepEqual(idleLines('prefer').map((l) => [l.client, String(l.reason).includes('never a MAIL FROM')]),
    [['127.0.0.3', true], ['127.0.0.5', true], ['127.0.0.2', false]]);
  for (const c of [transaction, nooper, delivered, quiet, ...newcomers]) c.destroy();
});

test('connections receiving a message are never closed for idleness; one idle after its message is', { timeout: 30_000 }, async () => {
  const senders: SmtpTestClient[] = [];
  for (const ip of ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5']) {
    const c = await afterEhlo('busy', ip);
    await mailFrom(c);
    assert.equal((await c.command('DATA')).code, 354);
    c.socket.write('Subject: slow\r\n\r\n');
    senders.push(c);
  }
  let sending = true;
  let finishing: SmtpTestClient | null = null;
  const loop = (async () => {
    while (sending) {
      for (const c of senders) if (!c.closed && c !== finishing) c.socket.write('a line\r\n');
      await sleep(50);
    }
  })();
  await idleOut();

  const refused = await SmtpTestClient.connect(server.port('busy'), { localAddress: '127.0.0.6' });
  assert.match((await refused.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/);
  assert.deepEqual(senders.map((c) => c.closed), [false, false, false, false]);

  finishing = senders[2]!;
  finishing.socket.write('.\r\n');
  assert.equal((await finishing.read()).code, 250, finishing.transcript.join('\n'));
  await idleOut();
  const newcomer = await SmtpTestClient.connect(server.port('busy'), { localAddress: '127.0.0.7' });
  assert.equal((await newcomer.read()).code, 220, newcomer.transcript.join('\n'));
  await until('the one done with its message closed', () => finishing!.closed);
  assert.deepEqual(senders.map((c) => c.closed), [false, false, true, false]);
  sending = false;
  await loop;
  for (const c of senders.filter((s) => !s.closed)) {
    c.socket.write('.\r\n');
    assert.equal((await c.read()).code, 250, 'each message still taken');
  }
  for (const c of [...senders, refused, newcomer]) c.destroy();
});

test('a connection waiting for its greeting is not idle: the newcomer is refused as before', { timeout: 30_000 }, async () => {
  const waiting = await SmtpTestClient.connect(server.port('greeting'), { localAddress: '127.0.0.2' });
  await until('one open', () => open('greeting') === 1);
  await idleOut();
  const refused = await SmtpTestClient.connect(server.port('greeting'), { localAddress: '127.0.0.3' });
  assert.match((await refused.read()).text, /Too many connected clients, try again in a moment$/);
  assert.equal((await waiting.read()).code, 220, waiting.transcript.join('\n'));
  for (const c of [waiting, refused]) c.destroy();
});

test('idleWhenFullMs 0: idle holders keep a full listener, as before', { timeout: 30_000 }, async () => {
  const holders = [await afterEhlo('off', '127.0.0.2'), await afterEhlo('off', '127.0.0.3')];
  await idleOut();
  const refused = await SmtpTestClient.connect(server.port('off'), { localAddress: '127.0.0.4' });
  assert.match((await refused.read()).text, /Too many connected clients, try again in a moment$/);
  assert.deepEqual(holders.map((c) => c.closed), [false, false]);
  assert.equal(idleLines('off').length, 0);
  for (const c of [...holders, refused]) c.destroy();
});
