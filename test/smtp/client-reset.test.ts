// Clients that go away: a reset outside a transaction is a normal end (debug), inside one an error; one
// that leaves in the middle of its message leaves nothing behind (message-intake.ts reads with events).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { PLAIN_MX_CONFIG, startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';

const resetLines = (s: TestServer, level: number): Array<Record<string, unknown>> =>
  s.logs.filter((l) => l.level === level && /ECONNRESET/.test(JSON.stringify(l)));

async function resetAfter(s: TestServer, commands: string[]): Promise<void> {
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.hello();
  for (const command of commands) assert.equal((await c.command(command)).code, 250);
  c.socket.resetAndDestroy();
}


test('a reset outside a transaction is logged at debug only; inside one it is logged at info as the client\'s fault, without a stack trace', async () => {
  const s = await startTestServer({ config: PLAIN_MX_CONFIG });
  try {
    await resetAfter(s, []);
    await until('the reset logged at debug', () => resetLines(s, 20).length > 0);
    assert.deepEqual(resetLines(s, 30).concat(resetLines(s, 50)), [], 'nothing at info or above for a client hanging up between transactions');
    await resetAfter(s, ['MAIL FROM:<a@example.com>']);
    await until('the reset logged at info', () => resetLines(s, 30).length > 0);
    assert.equal(resetLines(s, 50).length, 0, 'not a server error');
    for (const line of resetLines(s, 30)) assert.doesNotMatch(JSON.stringify(line), /"stack"/);
  } finally {
    await s.stop();
  }
});

test('a client that leaves mid-DATA leaves no message and no partial file; the next one is spooled', async () => {
  const s = await startTestServer({ config: PLAIN_MX_CONFIG });
  try {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    // Past the journal's 1 MiB a message streams to its own file in incoming/: that file must go too.
    const line = 'x'.repeat(998) + '\r\n';
    c.socket.write('Subject: cut off\r\n\r\n' + line.repeat(1500));
    await until('the message being written to incoming/', async () => (await readdir(s.runtime.spool.incomingDir)).length === 1);
    c.destroy();
    await until('the partial file removed', async () => (await readdir(s.runtime.spool.incomingDir)).length === 0);
    assert.deepEqual(await s.runtime.spool.list(), [], 'nothing was spooled');
    assert.equal(s.logs.filter((l) => l.msg === 'spooling failed').length, 0, 'a client leaving is not a spool failure');

    const next = await SmtpTestClient.connect(s.port('mx'));
    await next.hello();
    const reply = await next.sendMail('a@example.com', ['b@example.com']);
    assert.equal(reply.code, 250, reply.text);
    assert.equal((await s.runtime.spool.list()).length, 1);
    await next.quit();
  } finally {
    await s.stop();
  }
});
