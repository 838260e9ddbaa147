// A backlog of retries all due at once, for a destination still down (here after `postern queue retry --all`,
// as an operator does once an outage seems over; a restart after downtime does the same): the queue took them
// earliest first, so mail that came in meanwhile, due later, waited until every one of them had been tried
// and deferred again (a read and a synced state file each). New mail and retries now take turns (Postfix's
// incoming and deferred queues): counted here, the retries attempted between the new message's arrival and
// its delivery was begun (the live next hop's EHLO: retries deferred while the new message is being sent are
// not ahead of it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { retryMessages } from '../../engine/queue/admin.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';

const BACKLOG = 600;

test('new mail is not queued behind a backlog of retries due at once for a dead destination', { timeout: 240_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-retry-backlog-'));
  // The live next hop notes how many attempts had ended when the new message's delivery reached it.
  const seen = { attemptsAtEhlo: -1 };
  let attempts: () => number = () => -1;
  const sink = await startScriptedPeer({ ehlo: () => { seen.attemptsAtEhlo = attempts(); } });
  try {
    const spool = new Spool(join(dir, 'data', 'spool'));
    await spool.init();
    const ids = await spoolMessages(spool, Array.from({ length: BACKLOG }, (_, i) => `r${i}@dead.test`), { deferredUntil: new Date(Date.now() + 3600_000) });
    spool.close();

    // Nothing listens on 127.0.0.8: dead.test's mail is refused at once, then deferred as suspended.
    const s = await startDeliveryServer({
      dataDir: join(dir, 'data'),
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600], concurrency: 1 },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({
        'dead.test': [{ exchange: 'mx.dead.test', priority: 10 }],
        'live.test': [{ exchange: 'mx.live.test', priority: 10 }],
      }, { 'mx.dead.test': ['127.0.0.8'], 'mx.live.test': ['127.0.0.1'] }),
    });
    attempts = () => s.attempts.length;
    try {
      await s.scans(1, 120_000);
      await retryMessages(s.spools, 'all');
      await s.scans(1, 120_000); // every retry read again and due now
      // Counted from the new message's 250 (it is due from then on) to its delivery's EHLO at the next hop: the
      // retries tried while the client was still sending it, or while it was being sent, are not ahead of it.
      const live = await s.send('a@origin.test', ['z@live.test']);
      const before = s.attempts.length;
      const e = await s.nextAttempt((x) => x.id === live, { timeoutMs: 180_000, past: true });
      assert.equal(e.removed, true);
      assert.ok(seen.attemptsAtEhlo >= before, 'the next hop saw the delivery begin');
      const retried = s.attempts.slice(before, seen.attemptsAtEhlo).filter((x) => ids.includes(x.id)).length;
      const left = BACKLOG - s.attempts.slice(0, before).filter((x) => ids.includes(x.id)).length;
      assert.ok(left > 50, `the backlog was still there when the new message came (${left} left): the test shows nothing otherwise`);
      assert.ok(retried <= 10, `${retried} retries of the dead destination attempted before the new message (${left} were waiting)`);
    } finally {
      await s.stop();
    }
  } finally {
    sink.close();
    await rm(dir, { recursive: true, force: true });
  }
});
