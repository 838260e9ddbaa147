/**
 * A delivery whose connect fails with EMFILE (the queue process out of descriptors: its own shortage, not the next
 * hop's) was counted as an attempt like any deferral: its number went up, pushing the message along the retry
 * schedule, and a message past delivery.maxAgeHours was bounced there and then ("retry period over") with "this
 * process is out of resources" as the reason: the sender told their mail failed because OUR process was short of
 * descriptors, though the next hop was never asked. A serious MTA does not count its own resource shortage against a
 * message: such an attempt is not counted (no bounce, attempts unchanged) and it is tried again soon; the next real
 * attempt delivers it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { startSink } from '../helpers/sink.ts';
import { startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';
import { runCli } from '../helpers/cli.ts';

test('a connect refused for want of our own descriptors neither counts as an attempt nor bounces an old message', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-own-shortage-'));
  const sink = await startSink({});
  const faults = diskFaults();
  try {
    // Ten days old (past the default maxAgeHours 120), two failed attempts, its next one an hour away.
    const dataDir = join(dir, 'data');
    const spool = new Spool(join(dataDir, 'spool'));
    await spool.init();
    const [id] = await spoolMessages(spool, ['b@example.test'], { receivedAt: new Date(Date.now() - 10 * 86400_000), deferredUntil: new Date(Date.now() + 3600_000), attempts: 2 });
    spool.close();
    const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [1, 86400] })}`, env: faults.env, dataDir });
    try {
      await c.waitFor('the queue runner started', () => c.logs.some((l) => l.msg === 'queue runner started'));
      faults.arm('socket-emfile');
      const retry = await runCli(['queue', 'retry', id!, '-c', join(c.dir, 'postern.yaml')]);
      assert.equal(retry.code, 0, retry.stderr);
      await c.waitFor('the attempt\'s socket() refused', () => faults.taken('socket-emfile'));
      const notified = (): Array<Record<string, unknown>> => c.logs.filter((l) => l.id === id && /sender non-delivery notification/.test(String(l.msg)));
      await c.waitFor('delivered, or bounced', () => sink.messages.length > 0 || notified().length > 0);
      assert.deepEqual(notified().map((l) => l.msg), [], 'not bounced for our own shortage of descriptors');
      await sink.waitFor(1);
      assert.deepEqual(sink.messages.map((m) => [m.from, m.to]), [['s@origin.test', ['b@example.test']]], 'the message itself delivered, no notice');
      const failed = c.logs.filter((l) => l.id === id && l.status === 'deferred');
      assert.equal(failed.length, 1, 'the refused connect is logged');
      assert.match(String(failed[0]!.reply), /out of resources \(EMFILE/);
      const sent = await c.waitFor('the delivery logged', () => c.logs.find((l) => l.id === id && l.status === 'sent'));
      assert.equal(sent.attempt, 3, 'the delivery is its third attempt: the refused connect was not counted');
    } finally {
      await c.stop();
    }
  } finally {
    await sink.close();
    await rm(dir, { recursive: true, force: true });
  }
});
