// The queue process killed (SIGKILL) after it spooled a bounce and before it recorded the attempt that made it (the
// rename of the message's state file). After its restart the attempt runs again and fails the same recipient again:
// it finds the bounce it spooled instead of spooling another, and the sender gets one bounce, not two.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { SpoolSet } from '../../engine/cluster/spool-set.ts';
import { startSink } from '../helpers/sink.ts';
import { startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

test('the queue process killed between spooling a bounce and recording the attempt: one bounce after its restart', async () => {
  let refuseLater = true;
  const sink = await startSink({
    decide: (stage, address) => (stage !== 'rcpt' ? null
      : address.startsWith('bad@') ? { code: 550, text: '5.1.1 No such user' }
        : refuseLater && address.startsWith('later@') ? { code: 451, text: '4.2.0 Try again later' } : null),
  });
  const faults = diskFaults();
  faults.armFor('rename-kill', '.state');
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [0.2] })}`, env: faults.env });
  try {
    const id = await submitMessage(c.port('in'), 'a@example.test', ['bad@example.test', 'later@example.test']);
    await c.waitFor('the queue process killed at the state file\'s rename', () => faults.taken('rename-kill'));
    await c.waitFor('the queue process restarted', async () => (await c.cluster()).processes.find((p) => p.role === 'queue' && p.restarts >= 1 && p.ready));
    refuseLater = false;
    const spool = new SpoolSet(new Spool(join(c.dataDir, 'spool')));
    await c.waitFor('the message and its bounce finished', async () => !(await spool.list()).length && sink.messages.some((m) => m.to.includes('later@example.test')));
    const bounces = sink.messages.filter((m) => m.from === '' && m.to.includes('a@example.test'));
    assert.equal(bounces.length, 1, 'one bounce');
    assert.ok(bounces[0]!.data.toString().includes(id), 'the bounce names the message');
  } finally {
    await c.stop();
    await sink.close();
  }
});
