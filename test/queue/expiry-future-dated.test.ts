// Mail accepted while the wall clock ran years ahead (a machine that booted in 2038, a typo in `date -s`), then the
// clock set right: by the wall clock its age stays negative until the clock catches up, so it was retried every
// retry step for years and never bounced; its sender never learned. Its age is now what its failed attempts waited
// at least by the retry schedule: here 3 attempts of 1 h each are past maxAgeHours 2 (bounced at the 4th), 1 is not.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';

test('mail dated years ahead (a clock set back since) expires by the waits of its attempts, not when the clock catches up', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-future-dated-'));
  const sink = await startSink({ decide: (stage) => (stage === 'rcpt' ? { code: 451, text: '4.3.0 try again some day' } : null) });
  try {
    const spool = new Spool(join(dir, 'data', 'spool'));
    await spool.init();
    const receivedAt = new Date(Date.now() + 12 * 365 * 86400_000);
    const due = new Date(Date.now() - 1000);
    const [old] = await spoolMessages(spool, ['old@dest.test'], { receivedAt, deferredUntil: due, attempts: 3 });
    const [young] = await spoolMessages(spool, ['young@dest.test'], { receivedAt, deferredUntil: due, attempts: 1 });
    spool.close();
    const s = await startDeliveryServer({
      dataDir: join(dir, 'data'),
      config: configYaml({ hostname: 'postern.test', listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600], maxAgeHours: 2 }) }),
      scripts: {},
    });
    try {
      const a = await s.nextAttempt((e) => e.id === old, { past: true, timeoutMs: 60_000 });
      assert.equal(a.removed, true, 'bounced: its 3 attempts waited 3 h, past maxAgeHours 2');
      assert.ok(a.bounceId, 'its sender is told');
      const b = await s.nextAttempt((e) => e.id === young, { past: true, timeoutMs: 60_000 });
      assert.deepEqual([b.removed, b.outcomes.map((o) => o.status)], [false, ['temporary']], 'deferred: 1 h waited, below 2');
    } finally {
      await s.stop();
    }
  } finally {
    await sink.close();
    await rm(dir, { recursive: true, force: true });
  }
});
