// A RET=FULL notice that the next hop refuses for its size is spooled again with the returned message's header only
// (dsn-over-next-hop-size.test.ts). That second notice had a random id and no tie to the attempt that made it: a crash
// after it was spooled and before the refused notice's attempt was recorded (its removal) made that attempt run again
// at the restart, be refused again, and spool a second header-only notice, and the sender got the bounce twice. A real
// `postern serve` (supervisor, one worker, the queue process) and a real next hop on loopback with a SIZE of 1 MiB: a
// message just within it bounces into a notice over it; the queue process is killed (the crash walk) as it removes the
// refused notice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crashWalk, startWalkedServer } from '../helpers/crash-walk.ts';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, spooled } from '../helpers/cluster.ts';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';

const walk = crashWalk();

test('a header-only notice spooled before a crash is not spooled again by the refused notice\'s attempt run again', { timeout: 180_000 }, async () => {
  const sink = await startSink({ size: 1024 * 1024, decide: (stage, address) => (stage === 'rcpt' && address === 'gone@example.test' ? { code: 550, text: '5.1.1 User unknown' } : null) });
  const { c, remove } = await startWalkedServer(walk, deliveryToSink(sink.port, { retrySchedule: [0.2], scanIntervalMs: 200 }));
  try {
    // The first removal of a message file: the refused notice's (the message itself and the header-only notice are
    // journal records; the notice returning 1 MB has a file of its own).
    walk.arm(1, 'kill', { call: 'unlink', pathEnd: '.msg' });
    const client = await SmtpTestClient.connect(c.port('in'));
    await client.hello();
    const body = `${'x'.repeat(98)}\r\n`.repeat(10_470); // 1,047,000 bytes: within the next hop's SIZE; its whole return is not
    await sendWithParams(client, '<me@example.test> RET=FULL', ['<gone@example.test>'], `From: me@example.test\r\nSubject: big\r\n\r\n${body}`);
    await client.quit();
    const bounces = (): number => sink.messages.filter((m) => m.from === '').length;
    await c.waitFor('a bounce delivered and the spool empty', async () => bounces() >= 1 && (await spooled(c)).size === 0);
    assert.ok(walk.taken(), 'the queue process was killed as it removed the refused notice');
    // A second notice, if one was spooled, has been delivered too: the spool is empty.
    assert.equal(bounces(), 1, 'the sender got the header-only bounce once');
  } finally {
    walk.disarm();
    await c.stop();
    await sink.close();
    await remove();
  }
});
