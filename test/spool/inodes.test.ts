/**
 * A spool filesystem out of inodes with free bytes left (many small files beside the spool, ext4's fixed count; a
 * tmpfs with `nr_inodes=` here). Small messages go into journal segments that already exist and need no inode,
 * so they were still taken while the queue could no longer create a state file or a segment's done list: the
 * outcomes of deliveries were kept only in memory. Below spool.minFreeInodes new mail gets 452 4.3.1 (the decision
 * line and /readyz name the floor), the queue records and finishes what it holds, and mail is taken again once files are freed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdirSync, openSync, rmSync, statfsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, greeted, ONE_WORKER, startCluster } from '../helpers/cluster.ts';
import { until } from '../helpers/wait.ts';
import { needsTmpfs, testFilesystem } from '../helpers/tmpfs.ts';
import { writeFile } from 'node:fs/promises';
import { RESERVE_BYTES, SpoolReserve } from '../../engine/spool/reserve.ts';
import { evenWhenFull } from '../../engine/queue/admin.ts';

const skip = needsTmpfs();
const FLOOR = 100;

test('below spool.minFreeInodes new mail gets 452 4.3.1; deliveries are recorded and mail is taken again once files are freed', { skip, timeout: 240_000 }, async () => {
  const mount = testFilesystem(64, { inodes: 500 });
  let defer = true;
  const sink = await startSink({ decide: (stage) => (stage === 'data' && defer ? { code: 451, text: '4.3.0 try later' } : null) });
  const dataDir = join(mount.dir, 'data');
  const c = await startCluster({ config: `${ONE_WORKER}admin: { listen: "127.0.0.1:{PORT:admin}" }\nspool: { minFreeBytes: 0, minFreeInodes: ${FLOOR} }\n${deliveryToSink(sink.port, { retrySchedule: [1] })}`, dataDir });
  try {
    await c.waitFor('the reserve', () => { try { return statSync(join(dataDir, 'spool', 'reserve')).size > 0; } catch { return false; } });
    const send = async (subject: string): Promise<{ code: number; text: string }> => {
      const client = await greeted(c);
      try {
        return await client.sendMail('a@example.test', ['b@example.test'], `Subject: ${subject}\r\n\r\nbody\r\n`);
      } finally {
        await client.quit();
      }
    };
    assert.equal((await send('before')).code, 250);

    // Files beside the spool take the inodes down to half the floor; bytes stay plentiful.
    const filler = join(mount.dir, 'filler');
    mkdirSync(filler);
    for (let n = 0; statfsSync(mount.dir).ffree > FLOOR / 2; n++) closeSync(openSync(join(filler, String(n)), 'w'));
    assert.ok(statfsSync(mount.dir).bavail * statfsSync(mount.dir).bsize > 32 * 1024 * 1024, 'bytes are free');

    await until('new mail refused with 452 4.3.1', async () => {
      const r = await send('while short');
      assert.ok(r.code === 250 || r.code === 452, r.text); // 250 until the next look at the filesystem (once a second)
      return r.code === 452 && /^452 4\.3\.1 /.test(r.text);
    }, { timeoutMs: 30_000, intervalMs: 300 }); // a few taken before the look, not enough to use up what is left
    await c.waitFor('the decision line names the floor', () => c.logs.some((l) => l.decision === 'defer' && l.reason === 'spool.minFreeInodes'));
    const ready = await fetch(`http://127.0.0.1:${c.port('admin')}/readyz`);
    assert.equal(ready.status, 503);
    assert.match((await ready.json() as { checks: { spool: { detail: string } } }).checks.spool.detail, /^\d+ inodes free on the spool's filesystem, below spool\.minFreeInodes \(100\)/);

    // The queue still has files for its bookkeeping: a deferral recorded (a state file), then the delivery finished.
    await c.waitFor('a deferral recorded', () => c.logs.some((l) => l.status === 'deferred' && l.component === 'queue'));
    defer = false;
    await until('delivered', () => sink.messages.some((m) => m.data.toString().includes('Subject: before')), { timeoutMs: 60_000 });
    await c.waitFor('removed from the spool', () => c.logs.some((l) => /message finished, removed from the spool/.test(String(l.msg))));
    assert.ok(!c.logs.some((l) => /cannot record the outcome/.test(String(l.msg))), 'every outcome was recorded');

    rmSync(filler, { recursive: true });
    await until('mail taken again', async () => (await send('after')).code === 250, { timeoutMs: 30_000 });
  } finally {
    await c.stop();
    await sink.close();
    mount.unmount();
  }
});

test('out of inodes, the queue says so and keeps the reserve (it frees bytes, not inodes); nothing is lost and mail goes once files are freed', { skip, timeout: 240_000 }, async () => {
  const mount = testFilesystem(64, { inodes: 500 });
  let defer = true;
  const sink = await startSink({ decide: (stage) => (stage === 'data' && defer ? { code: 451, text: '4.3.0 try later' } : null) });
  const dataDir = join(mount.dir, 'data');
  const reserve = join(dataDir, 'spool', 'reserve');
  // No inode floor: the queue meets the ENOSPC itself (files made beside the spool faster than the floor is looked at).
  const c = await startCluster({ config: `${ONE_WORKER}spool: { minFreeBytes: 0, minFreeInodes: 0 }\n${deliveryToSink(sink.port, { retrySchedule: [1] })}`, dataDir });
  try {
    await c.waitFor('the reserve', () => { try { return statSync(reserve).size === RESERVE_BYTES; } catch { return false; } });
    const client = await greeted(c);
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'], 'Subject: queued\r\n\r\nbody\r\n')).code, 250);
    await client.quit();
    await c.waitFor('a deferral recorded', () => c.logs.some((l) => l.status === 'deferred' && l.component === 'queue'));

    // Every inode taken; bytes stay plentiful. The next deferral's state file cannot be made.
    const filler = join(mount.dir, 'filler');
    mkdirSync(filler);
    try {
      for (let n = 0; ; n++) closeSync(openSync(join(filler, String(n)), 'w'));
    } catch (err) {
      assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC');
    }
    assert.ok(statfsSync(mount.dir).bavail * statfsSync(mount.dir).bsize > 32 * 1024 * 1024, 'bytes are free');
    await c.waitFor('the queue cannot record an outcome', () => c.logs.some((l) => /cannot record the outcome|delivery attempt failed/.test(String(l.msg))));
    await c.waitFor('the log says inodes', () => c.logs.some((l) => /^spool: the filesystem is out of inodes \(files\), not bytes/.test(String(l.msg))));
    assert.ok(!c.logs.some((l) => /disk is full/.test(String(l.msg))), `not called a full disk: ${JSON.stringify(c.logs.filter((l) => /disk is full/.test(String(l.msg))).map((l) => l.msg))}`);
    assert.equal(statSync(reserve).size, RESERVE_BYTES, 'the reserve is kept');

    rmSync(filler, { recursive: true });
    defer = false;
    await until('delivered', () => sink.messages.some((m) => m.data.toString().includes('Subject: queued')), { timeoutMs: 60_000 });
    await c.waitFor('removed from the spool', () => c.logs.some((l) => /message finished, removed from the spool/.test(String(l.msg))));
  } finally {
    await c.stop();
    await sink.close();
    mount.unmount();
  }
});

test('a change by postern queue out of inodes: the error says inodes, and the reserve is kept (releasing it frees no inode)', { skip }, async () => {
  const mount = testFilesystem(16, { inodes: 50 });
  try {
    const reserve = new SpoolReserve(join(mount.dir, 'reserve'));
    assert.equal(await reserve.keep(Number.MAX_SAFE_INTEGER, 0), true);
    for (let n = 0; ; n++) {
      try { closeSync(openSync(join(mount.dir, `f${n}`), 'w')); } catch (err) { assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC'); break; }
    }
    await assert.rejects(evenWhenFull({ reserve }, () => writeFile(join(mount.dir, 'record'), 'x')), (err: NodeJS.ErrnoException) => {
      assert.equal(err.code, 'ENOSPC');
      assert.match(err.message, /is out of inodes, with bytes free/);
      return true;
    });
    assert.equal(reserve.state, 'kept');
  } finally {
    mount.unmount();
  }
});
