// The end of DATA: a client that leaves in the middle of its message leaves nothing behind, and the
// server goes on serving (the message stream is read with events; see message-intake.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const CONFIG = `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
`;

test('a client that leaves mid-DATA leaves no message and no partial file; the next one is spooled', async () => {
  const s = await startTestServer({ config: CONFIG });
  try {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    // Past the journal's 1 MiB a message streams to its own file in incoming/: that file must go too.
    const line = 'x'.repeat(998) + '\r\n';
    c.socket.write('Subject: cut off\r\n\r\n' + line.repeat(1500));
    await sleep(300);
    assert.equal((await readdir(s.runtime.spool.incomingDir)).length, 1, 'the message was being written to incoming/');
    c.destroy();
    await sleep(300);
    assert.deepEqual(await readdir(s.runtime.spool.incomingDir), [], 'the partial file is removed');
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
