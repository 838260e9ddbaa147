/**
 * A RET=FULL failure notice that the sender's next hop refuses for its size (552 5.3.4) is spooled again with the
 * message's header only. When that spooling failed (a journal write or sync failing with EIO, the open-file limit, a
 * full disk: our own trouble, which passes), the error was logged and the refused notice was then discarded as an
 * undeliverable bounce: the sender never heard that their message failed. A failure to spool a message is no verdict
 * on it: the notice stays queued, and a later attempt makes its header-only copy (or delivers it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { startCluster, ONE_WORKER, deliveryToSink, greeted } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { sendWithParams } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

test('the header-only copy of a notice refused for its size cannot be spooled: the notice stays queued, not discarded', { timeout: 180_000 }, async () => {
  // The notice's recipient: deferred first (so that the fault can be armed before the refusal), then refused for size once.
  let notice: 'defer' | 'too-big' | 'accept' = 'defer';
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage !== 'rcpt') return null;
      if (address === 'gone@example.test') return { code: 550, text: '5.1.1 <gone@example.test>: User unknown' };
      if (address !== 'me@origin.test') return null;
      if (notice === 'defer') return { code: 451, text: '4.2.0 Try again later' };
      if (notice === 'too-big') { notice = 'accept'; return { code: 552, text: '5.3.4 Message too big for this mailbox' }; }
      return null;
    },
  });
  const faults = diskFaults();
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [3600] })}`, env: faults.env });
  try {
    const client = await greeted(c);
    const id = await sendWithParams(client, '<me@origin.test> RET=FULL', ['<gone@example.test>'], 'From: me@origin.test\r\nSubject: lost?\r\n\r\nbody\r\n');
    await client.quit();
    const spooledLine = await c.waitFor('the failure notice spooled', () => c.logs.find((l) => l.id === id && typeof l.bounce === 'string' && /non-delivery notification/.test(String(l.msg))));
    const bounceId = String(spooledLine.bounce);
    // A scan may find the notice before its message's record is written: it then waits a whole retry delay (an hour).
    await c.waitFor('the message finished', () => c.logs.some((l) => l.id === id && /finished/.test(String(l.msg))));
    const first = await runCli(['queue', 'retry', bounceId, '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(first.code, 0, first.stderr);
    await c.waitFor('the notice deferred', () => c.logs.some((l) => l.id === bounceId && l.status === 'deferred'));
    // The next journal sync (the queue process spooling the header-only copy) fails.
    faults.arm('fdatasync-eio');
    notice = 'too-big';
    const retry = await runCli(['queue', 'retry', bounceId, '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(retry.code, 0, retry.stderr);
    await c.waitFor('the notice refused for its size', () => c.logs.some((l) => l.id === bounceId && l.status === 'bounced'));
    await c.waitFor('the header-only copy failed to spool', () => c.logs.some((l) => l.id === bounceId && /cannot spool the notice again with the header only/.test(String(l.msg))));
    assert.ok(faults.taken('fdatasync-eio'));
    const discarded = c.logs.filter((l) => l.id === bounceId && /discarded/.test(String(l.msg)));
    assert.deepEqual(discarded.map((l) => l.msg), [], 'the notice is not discarded for our failure to spool its copy');
    // Tried again (at once if a retry request is still pending, else now): the sender hears of the failure.
    await runCli(['queue', 'retry', bounceId, '-c', join(c.dir, 'postern.yaml')]);
    await c.waitFor('a notice delivered to the sender', () => sink.messages.some((m) => m.from === '' && m.to.includes('me@origin.test')));
  } finally {
    await c.stop();
    await sink.close();
  }
});
