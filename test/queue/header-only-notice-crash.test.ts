// A crash after a notice refused for its size was spooled again with the header only, before the refused notice's
// attempt was recorded. A real `postern serve` (supervisor, one worker, the queue process) and a next hop on loopback
// that takes at most 1 MiB: a message just within it, RET=FULL, is refused for its recipient (550); its bounce returns
// it whole and is refused for its size (5.3.4), so a notice with the header only is spooled; the queue process is
// killed (the crash walk) at the removal that records the refused notice's attempt (found by a first life that only
// counts). Restarted, it runs that attempt
// again: refused for its size again. The sender must get one bounce: the copy with the header only had a fresh random
// id each time, and both went out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crashWalk, startWalkedServer, type CrashAction, type CrashPoint } from '../helpers/crash-walk.ts';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, spooled } from '../helpers/cluster.ts';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';

const walk = crashWalk();

/** One life of the message; the walk armed at the refusal of its recipient with `n` and `action` (the n-th call named by `only`). */
async function life(n: number, action: CrashAction, only?: { call: string; pathEnd: string }): Promise<{ bounces: number; trace: CrashPoint[]; hit: CrashPoint | undefined }> {
  const sink = await startSink({
    size: 1024 * 1024,
    decide: (stage, address) => {
      if (stage !== 'rcpt' || address !== 'gone@example.test') return null;
      walk.arm(n, action, only);
      return { code: 550, text: '5.1.1 <gone@example.test>: User unknown' };
    },
  });
  const { c, remove } = await startWalkedServer(walk, deliveryToSink(sink.port, { retrySchedule: [0.2], scanIntervalMs: 200 }));
  try {
    const client = await SmtpTestClient.connect(c.port('in'));
    await client.hello();
    const body = `${'x'.repeat(98)}\r\n`.repeat(10_470); // within the next hop's SIZE; the bounce that returns it whole is not
    await sendWithParams(client, '<me@example.test> RET=FULL', ['<gone@example.test>'], `From: me@example.test\r\nSubject: big\r\n\r\n${body}`);
    await client.quit();
    const bounces = (): number => sink.messages.filter((m) => m.from === '').length;
    await c.waitFor('a bounce delivered and the spool empty', async () => bounces() >= 1 && (await spooled(c)).size === 0);
    return { bounces: bounces(), trace: walk.trace(), hit: walk.hit() };
  } finally {
    walk.disarm();
    await c.stop();
    await sink.close();
    await remove();
  }
}

test('a notice sent again with the header only, then a crash before the refused notice\'s record: one bounce, not two', { timeout: 180_000 }, async () => {
  const counted = await life(0, 'none');
  assert.equal(counted.bounces, 1);
  // The refused notice's record, after the copy's commit (its journal record): its removal, a done mark of its journal
  // record or the unlink of its file of its own (a notice that returns 1 MB whole is larger than a journal record).
  const home = (p: CrashPoint): boolean => !p.path.includes('/worker-') && !p.path.includes('/incoming/');
  const copied = counted.trace.findIndex((p) => home(p) && p.call === 'pwritev' && p.path.endsWith('.seg'));
  const record = counted.trace.slice(copied + 1).find((p) => home(p) && (p.call === 'unlink' || (p.call === 'write' && p.path.endsWith('.done'))));
  assert.ok(record, 'the refused notice\'s removal is in the trace');
  // Named by its call and file, and which of those calls it is: its number among all the calls counted shifts with
  // those other processes or threads make meanwhile (and the point taken has the number it was armed at, whatever call
  // that was).
  const pathEnd = record.call === 'unlink' ? record.path.slice(record.path.lastIndexOf('.')) : '/spool/journal/' + record.path.split('/').at(-1)!;
  const nth = counted.trace.filter((p) => p.n <= record.n && p.call === record.call && p.path.endsWith(pathEnd)).length;
  const o = await life(nth, 'kill', { call: record.call, pathEnd });
  assert.ok(o.hit && home(o.hit) && o.hit.call === record.call, `the queue process was killed at the refused notice's record (${record.call} ${pathEnd}), not at ${o.hit ? `${o.hit.call} ${o.hit.path}` : 'nothing'}`);
  assert.equal(o.bounces, 1, 'one bounce (with the header only) reached the sender\'s next hop');
});
