// limits.idleWhenFullMs counts a reply 2xx/3xx to a command other than a junk one as activity. Unbounded, a client
// repeating an accepted RCPT (RSET, MAIL FROM, RCPT again: each accepted, none junk but RSET, which maxJunkCommands
// lets pass 100 times) every few seconds was never idle, and held its slot of a full listener for about a day
// (some 100 transactions of maxRecipients RCPTs, each just within idleWhenFullMs) without sending a message. Now
// at most maxRecipients + 16 such replies between two accepted messages count.
//
// Here maxRecipients is 2 (18 replies count): the holder loops MAIL, RCPT, RCPT, RSET past that, goes on at a
// transaction every quarter of idleWhenFullMs for 1.5 times it, and stops: the newcomer that follows closes it
// (before, its last RCPT counted, and the newcomer was refused).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';

const IDLE_MS = 1000;
let server: TestServer;

before(async () => {
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: one
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 0, maxRecipients: 2, idleWhenFullMs: ${IDLE_MS} }
  # The same, judged at 10 s: a client served without a pause of that length, however loaded the machine.
  - name: sending
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 0, maxRecipients: 2, idleWhenFullMs: 10000 }
`,
  });
});
after(() => server.stop());

async function transaction(c: SmtpTestClient, reset: boolean): Promise<void> {
  for (const line of ['MAIL FROM:<a@sender.example>', 'RCPT TO:<b1@example.com>', 'RCPT TO:<b2@example.com>']) {
    assert.equal((await c.command(line)).code, 250, c.transcript.join('\n'));
  }
  if (reset) assert.equal((await c.command('RSET')).code, 250, c.transcript.join('\n'));
}

test('accepted RCPTs repeated without a message stop counting as activity: the holder is closed as idle', { timeout: 60_000 }, async () => {
  const holder = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.2' });
  assert.equal((await holder.read()).code, 220, holder.transcript.join('\n'));
  assert.equal((await holder.command('EHLO holder.example')).code, 250);
  for (let i = 0; i < 7; i++) await transaction(holder, true); // 21 accepted: past the 18 that count
  const pastBound = performance.now();
  while (performance.now() - pastBound < IDLE_MS * 1.5) {
    await sleep(IDLE_MS / 4); // a few transactions, well within maxJunkCommands (RSET)
    await transaction(holder, true);
  }
  await transaction(holder, false); // its last reply an accepted RCPT's, just read

  const newcomer = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.3' });
  assert.equal((await newcomer.read()).code, 220, `the newcomer is let in: ${newcomer.transcript.join('\n')}`);
  await until('the holder closed', () => holder.closed);
  assert.match((await holder.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, this connection idle for [\d.]+ s is closed for another client$/, holder.transcript.join('\n'));
  const lines = server.logs.filter((l) => typeof l.reason === 'string' && l.reason.startsWith('limits.idleWhenFullMs: '));
  assert.equal(lines.length, 1, JSON.stringify(lines));
  assert.match(String(lines[0]!.reason), /after a MAIL FROM/);
  for (const c of [holder, newcomer]) c.destroy();
});

test('a client whose messages are accepted is not idle: each accepted message starts the count again', { timeout: 60_000 }, async () => {
  const sender = await SmtpTestClient.connect(server.port('sending'), { localAddress: '127.0.0.4' });
  assert.equal((await sender.read()).code, 220, sender.transcript.join('\n'));
  assert.equal((await sender.command('EHLO sender.example')).code, 250);
  for (let i = 0; i < 12; i++) {
    await transaction(sender, true); // given up: 3 counted each
    assert.equal((await sender.sendMail('a@sender.example', ['b1@example.com', 'b2@example.com'])).code, 250, sender.transcript.join('\n'));
  }
  const newcomer = await SmtpTestClient.connect(server.port('sending'), { localAddress: '127.0.0.5' });
  assert.match((await newcomer.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/, newcomer.transcript.join('\n'));
  assert.equal(sender.closed, false);
  for (const c of [sender, newcomer]) c.destroy();
});
