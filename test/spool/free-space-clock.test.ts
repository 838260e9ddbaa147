/**
 * The spool's free space is looked at again once a second (engine/spool/free-space.ts), so a disk that fills
 * up refuses new mail (452 4.3.1) and takes it again once there is room. That second was measured on the
 * wall clock: once the clock was set back (NTP step, a VM restored from a snapshot) no second had passed
 * until the clock caught up, and whatever the disk was doing meanwhile, the last look stood: mail refused
 * for as long as the step (a day here) though the disk had room again, or taken while it filled up.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ONE_WORKER, greeted, type ClusterProcess } from '../helpers/cluster.ts';
import { needsFaketime, startSteppableCluster } from '../helpers/faketime.ts';
import { needsTmpfs, testFilesystem } from '../helpers/tmpfs.ts';
import { until } from '../helpers/wait.ts';

const skip = needsFaketime || needsTmpfs();
const MB = 1024 * 1024;

async function send(c: ClusterProcess, subject: string): Promise<{ code: number; text: string }> {
  const client = await greeted(c);
  try {
    return await client.sendMail('a@example.test', ['b@example.test'], `Subject: ${subject}\r\n\r\nx\r\n`);
  } finally {
    await client.quit();
  }
}

test('the wall clock set back a day: the spool\'s free space is still looked at every second, so room made again takes mail again', { skip, timeout: 180_000 }, async () => {
  const mount = testFilesystem(32);
  const floor = 12 * MB;
  const s = await startSteppableCluster(`${ONE_WORKER}spool: { minFreeBytes: ${floor} }\n`, { dataDir: join(mount.dir, 'data') });
  try {
    assert.equal((await send(s.c, 'room')).code, 250);
    // Ballast of the test's own leaves less than the floor: new mail is deferred.
    const free = (): number => { const f = statfsSync(mount.dir); return f.bavail * f.bsize; };
    const ballast = join(mount.dir, 'ballast');
    writeFileSync(ballast, Buffer.alloc(free() - floor + 2 * MB));
    assert.ok(free() < floor);
    await until('new mail deferred for want of room', async () => (await send(s.c, 'full')).code === 452, { timeoutMs: 60_000, intervalMs: 200 });

    s.step('-86400');
    rmSync(ballast);
    assert.ok(free() > floor);
    await until('new mail taken again', async () => {
      const r = await send(s.c, 'room again');
      assert.ok(r.code === 250 || r.code === 452, r.text);
      return r.code === 250;
    }, { timeoutMs: 60_000, intervalMs: 200 });
  } finally {
    await s.close();
    mount.unmount();
  }
});
