// The queue process killed (SIGKILL) at the moment it records a partly delivered message's progress: the rename
// of its state file, after the next hop accepted one recipient and deferred the other. Nothing is lost once it
// has been restarted: the deferred recipient gets the message once; the accepted one at least once, and at most
// twice (accepted before the record: SMTP cannot do better, RFC 1047). Nothing is left in the spool: not even the
// temporary file of the state write the kill cut short.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { SpoolSet, workerSpoolDir } from '../../engine/cluster/spool-set.ts';
import { startSink } from '../helpers/sink.ts';
import { startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

test('the queue process killed as it records a partly delivered message: after its restart no recipient is lost', async () => {
  let refuseLater = true;
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && refuseLater && address.startsWith('later@') ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const faults = diskFaults();
  faults.armFor('rename-kill', '.state');
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [0.2] })}`, env: faults.env });
  try {
    const id = await submitMessage(c.port('in'), 'a@example.test', ['ok@example.test', 'later@example.test']);
    await c.waitFor('the queue process killed at the state file\'s rename', () => faults.taken('rename-kill'));
    await c.waitFor('the queue process restarted', async () => (await c.cluster()).processes.find((p) => p.role === 'queue' && p.restarts >= 1 && p.ready));
    refuseLater = false;
    await c.waitFor('the message finished', async () => !(await new SpoolSet(new Spool(join(c.dataDir, 'spool'))).list()).includes(id));
    const copies = (rcpt: string): number => sink.messages.filter((m) => m.to.includes(rcpt)).length;
    assert.equal(copies('later@example.test'), 1, 'the deferred recipient: once');
    assert.ok(copies('ok@example.test') >= 1 && copies('ok@example.test') <= 2, `the accepted recipient: ${copies('ok@example.test')} copies`);
    // The killed process's temporary state file is removed by the restarted one's scan (its writer is gone), not
    // weeks later at the worker's next start.
    const queueDir = join(workerSpoolDir(c.dataDir, 0), 'queue');
    await c.waitFor('nothing left in the worker\'s queue folder', () => readdirSync(queueDir).length === 0);
  } finally {
    await c.stop();
    await sink.close();
  }
});
