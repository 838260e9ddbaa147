// Under `postern serve` the queue process moves a message deferred a second time out of the worker's journal (it holds
// a reader's view of it; the worker writes it and deletes its segments). Killed (SIGKILL) between the move's rename
// and its done mark, it leaves both copies: after its restart the message is one message, moved again, delivered
// once, and the worker's segments of the delivered mail are deleted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { SpoolSet, workerSpoolDir } from '../../engine/cluster/spool-set.ts';
import { startSink } from '../helpers/sink.ts';
import { startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

test('the queue process killed mid-move out of a worker\'s journal: each message delivered once, the segments deleted', async () => {
  let deferring = true;
  const sink = await startSink({ decide: (stage) => (stage === 'rcpt' && deferring ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const faults = diskFaults();
  // The queue process's first sync of a done list: the done mark of its first move, after the move's rename.
  faults.armFor('fsync-kill', '.done');
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [0.2] })}`, env: faults.env });
  try {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push(await submitMessage(c.port('in'), 'a@example.test', [`b${i}@example.test`], `Subject: moving ${i}\r\n\r\nbody ${i}\r\n`));
    await c.waitFor('the queue process killed at its first move\'s done mark', () => faults.taken('fsync-kill'));
    await c.waitFor('the queue process restarted', async () => (await c.cluster()).processes.find((p) => p.role === 'queue' && p.restarts >= 1 && p.ready));
    const worker = workerSpoolDir(c.dataDir, 0);
    const queued = new SpoolSet(new Spool(join(c.dataDir, 'spool')));
    await c.waitFor('every message moved out of the journal', () => ids.every((id) => existsSync(join(worker, 'queue', `${id}.msg`))));
    assert.deepEqual((await queued.list()).sort(), [...ids].sort(), 'each message listed once');

    deferring = false;
    await c.waitFor('every message delivered, the queue empty', async () => (await queued.list()).length === 0 && ids.every((_, i) => sink.messages.some((m) => m.to.includes(`b${i}@example.test`))));
    for (let i = 0; i < 3; i++) assert.equal(sink.messages.filter((m) => m.to.includes(`b${i}@example.test`)).length, 1, `message ${i} delivered once`);
    // The worker deletes a segment once all of its records are done; only the one it writes to stays.
    const segments = (): string[] => readdirSync(join(worker, 'journal')).filter((n) => n.endsWith('.seg'));
    await c.waitFor('the segments of the delivered mail deleted', () => segments().length <= 1);
    // Nothing left in the worker's queue folder (a removal takes the message file before its state file: waited for,
    // not read once): neither a state file nor the temporary file of a state write the kill cut short (the kill at
    // the first move's done mark may come while another message's state is being written), which the restarted
    // queue process removes as its writer is gone.
    await c.waitFor('nothing left in the worker\'s queue folder', () => readdirSync(join(worker, 'queue')).length === 0);
  } finally {
    await c.stop();
    await sink.close();
  }
});
