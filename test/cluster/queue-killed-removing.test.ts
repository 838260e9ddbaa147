// The queue process killed (SIGKILL) as it removes a delivered message: after the message's done mark in the worker's
// journal, before its state file goes (the sync of the done list). After its restart the message is not delivered
// again, and its state file does not stay behind in the worker's queue folder (until that worker's next start, which
// may be weeks later): the restarted queue process's scan removes it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { workerSpoolDir } from '../../engine/cluster/spool-set.ts';
import { startSink } from '../helpers/sink.ts';
import { startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

test('the queue process killed between a delivered message\'s done mark and the removal of its state file: delivered once, nothing left', async () => {
  let deferring = true;
  const sink = await startSink({ decide: (stage) => (stage === 'rcpt' && deferring ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const faults = diskFaults();
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [3600] })}`, env: faults.env });
  try {
    const id = await submitMessage(c.port('in'), 'a@example.test', ['b@example.test']);
    const queueDir = join(workerSpoolDir(c.dataDir, 0), 'queue');
    await c.waitFor('the first attempt deferred and recorded', () => existsSync(join(queueDir, `${id}.state`)));
    // The queue process's next sync of a done list: the removal's, once the next hop has accepted the message.
    faults.armFor('fsync-kill', '.done');
    deferring = false;
    const retry = await runCli(['queue', 'retry', id, '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(retry.code, 0, retry.stderr);
    await c.waitFor('the queue process killed at the removal\'s done mark', () => faults.taken('fsync-kill'));
    await c.waitFor('the queue process restarted', async () => (await c.cluster()).processes.find((p) => p.role === 'queue' && p.restarts >= 1 && p.ready));
    await c.waitFor('nothing left in the worker\'s queue folder', () => readdirSync(queueDir).length === 0);
    assert.equal(sink.messages.filter((m) => m.to.includes('b@example.test')).length, 1, 'delivered once');
  } finally {
    await c.stop();
    await sink.close();
  }
});
