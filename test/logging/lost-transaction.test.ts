// A session that ends with a mail transaction open — the client closes (FIN) or resets (RST) the connection after
// MAIL and RCPT, or in the middle of its message — leaves one info line naming the transaction, as Postfix's
// `lost connection after DATA from host[ip]`: queue id, session id, client, stage, sender and recipients. Before,
// a FIN left nothing at info at all, and a reset only `client connection error` with neither session id nor
// envelope: a message lost that way could not be found in the log. Not when the server itself closed with a reply
// (its decision line has the envelope), after QUIT, or once the message was received in full (its own line).
// Real server, real sockets.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

type Line = Record<string, unknown>;
let s: TestServer;
before(async () => {
  s = await startTestServer({
    config: configYaml({
      hostname: 'mx.test', localDomains: ['example.test'],
      listeners: [
        testListener('lostmx', { tls: { mode: 'none' } }),
        // 2 s, not 300 ms: this server and its clients share the test's process; descheduled that long between a reply and
        // the next command, it ran the idle timer before its client had sent that command (421 in place of a 250).
        testListener('lostidle', { tls: { mode: 'none' }, limits: { socketTimeoutMs: 2000 } }),
      ],
    }),
  });
});
after(() => s?.stop());

const lostLines = (from: number): Line[] => s.logs.slice(from).filter((l) => l.lost === true);
const connectionErrors = (from: number): Line[] => s.logs.slice(from).filter((l) => l.msg === 'client connection error');
const closedLines = (from: number): Line[] => s.logs.slice(from).filter((l) => typeof l.msg === 'string' && /Connection closed to/.test(l.msg));

/** MAIL from someone@example.net, RCPT to a@ and b@example.test. */
async function transaction(listener = 'lostmx'): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(s.port(listener));
  await c.read();
  await c.command('EHLO client.example');
  for (const line of ['MAIL FROM:<someone@example.net>', 'RCPT TO:<a@example.test>', 'RCPT TO:<b@example.test>']) assert.equal((await c.command(line)).code, 250);
  return c;
}

/** Waits until the server has closed its side of each session begun since `from` (smtp-server's debug line). */
async function sessionsClosed(from: number, count: number): Promise<void> {
  await until('the sessions closed', () => closedLines(from).length >= count, { timeoutMs: 30_000 });
}

function checkLost(line: Line, stage: string, clientError: string | undefined): void {
  assert.equal(line.level, 30);
  assert.equal(line.stage, stage);
  assert.equal(line.client, '127.0.0.1');
  assert.equal(line.listener, 'lostmx');
  assert.equal(line.from, 'someone@example.net');
  assert.equal(line.to, 'a@example.test,b@example.test');
  assert.equal(line.nrcpt, 2);
  assert.equal(line.clientError, clientError);
  assert.equal(line.decision, undefined, 'not a refusal: no decision line');
  assert.match(String(line.cid), /^\w+$/);
  assert.match(String(line.msg), new RegExp(`^${String(line.id)}: lost connection after ${stage}.* from unknown\\[127\\.0\\.0\\.1\\]${clientError ? ` \\(${clientError}\\)` : ''}: transaction not completed; from=<someone@example\\.net> to=<a@example\\.test,b@example\\.test> nrcpt=2$`));
}

test('the client closes after its RCPTs: one lost-connection line', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const c = await transaction();
  c.socket.end();
  await until('the lost-connection line', () => lostLines(mark).length > 0, { timeoutMs: 30_000 });
  await sessionsClosed(mark, 1);
  assert.equal(lostLines(mark).length, 1);
  checkLost(lostLines(mark)[0]!, 'RCPT', undefined);
  assert.deepEqual(connectionErrors(mark), []);
});

test('the client resets in the middle of its message: one lost-connection line with the reset, no separate connection error', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const c = await transaction();
  assert.equal((await c.command('DATA')).code, 354);
  c.socket.write('Subject: half\r\n\r\nhalf a message');
  await new Promise((r) => setImmediate(r));
  c.socket.resetAndDestroy();
  await until('the lost-connection line', () => lostLines(mark).length > 0, { timeoutMs: 30_000 });
  await sessionsClosed(mark, 1);
  assert.equal(lostLines(mark).length, 1);
  checkLost(lostLines(mark)[0]!, 'DATA', 'ECONNRESET');
  assert.match(String(lostLines(mark)[0]!.msg), /after DATA \(message not received in full\)/);
  assert.deepEqual(connectionErrors(mark), [], 'one line for one lost session');
});

test('no lost-connection line after QUIT, after a message received in full, or when the server closed with a reply', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const quitting = await transaction();
  await quitting.quit();

  const full = await transaction();
  assert.equal((await full.command('DATA')).code, 354);
  full.socket.write('Subject: whole\r\n\r\nbody\r\n.\r\n');
  assert.equal((await full.read()).code, 250);
  await full.command('MAIL FROM:<someone@example.net>');
  full.socket.end(); // a transaction open again, but the session's message was taken: this one is lost
  const idle = await transaction('lostidle');
  assert.equal((await idle.read(60_000)).code, 421);
  await until('the idle session\'s decision line', () => s.logs.slice(mark).some((l) => l.decision === 'defer' && l.reason === 'limits.socketTimeoutMs'), { timeoutMs: 30_000 });
  await sessionsClosed(mark, 3);
  // Only the second session's second transaction (MAIL, no recipient) was cut off.
  assert.deepEqual(lostLines(mark).map((l) => [l.stage, l.nrcpt]), [['MAIL', 0]]);
});
