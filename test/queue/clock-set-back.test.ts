// Mail spooled while the wall clock ran a day ahead, the clock then set right and the server started again (a VM
// restored from a snapshot, an RTC a day off until NTP stepped it): by the times on disk a message never attempted
// was due "tomorrow", and a message deferred by a 1 s retry step was due a day and a second ahead. Each was due
// after the longest retry step instead (here an hour; 4 hours by default). A message never attempted is due at
// once, whatever its id says; a deferred one at most its own retry step ahead.
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

const DAY = 86_400_000;

test('mail spooled while the clock ran a day ahead is due by its own schedule after a restart, not after the longest retry step', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-clock-back-'));
  const sink = await startSink();
  try {
    const spool = new Spool(join(dir, 'data', 'spool'));
    await spool.init();
    const ahead = new Date(Date.now() + DAY);
    const [fresh] = await spoolMessages(spool, ['fresh@dest.test'], { receivedAt: ahead });
    const [deferred] = await spoolMessages(spool, ['deferred@dest.test'], { receivedAt: ahead, deferredUntil: new Date(ahead.getTime() + 1000), attempts: 1 });
    spool.close();
    const s = await startDeliveryServer({
      dataDir: join(dir, 'data'),
      config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [1, 3600] }) }),
      scripts: {},
    });
    try {
      for (const id of [fresh!, deferred!]) {
        const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
        assert.equal(e.removed, true, `${id} delivered`);
      }
      assert.deepEqual(sink.messages.map((m) => m.to[0]).sort(), ['deferred@dest.test', 'fresh@dest.test']);
    } finally {
      await s.stop();
    }
  } finally {
    await sink.close();
    await rm(dir, { recursive: true, force: true });
  }
});
