// `postern queue hold` and `delete` on a long queue while the server runs: each asked the runner for a rescan,
// which rereads the state file of every message in the queue (30,000 deferred messages: 1.5 s of the queue
// process's CPU and its event loop held 300 ms, for each command; an operator deleting messages one command at
// a time made it do that for every one). The runner's ordinary scan already sees both: a held message is
// listed as held, a deleted one is no longer listed. Counted here: the state files the runner reads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { deleteMessage, holdMessages, releaseMessages } from '../../engine/queue/admin.ts';
import { startSink } from '../helpers/sink.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';

const MESSAGES = 2000;

test('hold and delete on a 2,000-message queue: the running server does not reread every state; release still delivers', { timeout: 180_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-queue-ops-'));
  const sink = await startSink();
  try {
    const spool = new Spool(join(dir, 'data', 'spool'));
    await spool.init();
    // Deferred for an hour; the last one, for a next hop that takes it, held.
    const ids = await spoolMessages(spool, Array.from({ length: MESSAGES }, (_, i) => `r${i}@later.test`), { deferredUntil: new Date(Date.now() + 3600_000) });
    ids.push(...await spoolMessages(spool, ['z@live.test']));
    const released = ids[MESSAGES]!;
    await spool.hold(released, { at: new Date().toISOString(), by: null });
    spool.close();

    const s = await startDeliveryServer({
      dataDir: join(dir, 'data'),
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600], scanIntervalMs: 200 },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'live.test': [{ exchange: 'mx.live.test', priority: 10 }] }, { 'mx.live.test': ['127.0.0.1'] }),
    });
    try {
      await s.scans(1, 120_000);
      assert.equal(s.queue!.queuedCount, MESSAGES, 'every deferred message scheduled, the held one not');
      let reads = 0;
      const readState = s.spools.readState.bind(s.spools);
      s.spools.readState = (id: string) => { reads++; return readState(id); };

      const held = await holdMessages(s.spools, [ids[10]!], { at: new Date().toISOString(), by: null });
      assert.deepEqual(held.changed, [ids[10]]);
      assert.equal(await deleteMessage(s.spools, ids[20]!), true);
      await s.scans(2, 120_000);
      assert.equal(s.queue!.queuedCount, MESSAGES - 2, 'the held one and the deleted one are no longer scheduled');
      assert.ok(reads < 10, `${reads} state files read after a hold and a delete, in a queue of ${MESSAGES}`);

      // Release still makes the message due at once.
      await releaseMessages(s.spools, [released]);
      await until('the released message delivered', () => sink.messages.length === 1, { timeoutMs: 60_000 });
      assert.deepEqual(sink.messages[0]!.to, ['z@live.test']);
    } finally {
      await s.stop();
    }
  } finally {
    await sink.close();
    await rm(dir, { recursive: true, force: true });
  }
});
