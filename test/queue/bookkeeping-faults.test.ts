// A message a next hop accepted is not sent again because the spool could not record it (a full disk):
// the "done" mark of a journal message fails with ENOSPC; the outcome is kept in memory and written later.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs, { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { syncBuiltinESMExports } from 'node:module';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

/** Makes the journal's done-list writes (`\n<id>\n`, one write each) fail with ENOSPC until restored. */
function failDoneMarks(): { failures: number; reached(n: number): Promise<void>; restore(): void } {
  const real = fs.writeSync;
  let failures = 0;
  const waiting: Array<{ n: number; resolve(): void }> = [];
  (fs as { writeSync: unknown }).writeSync = (fd: number, data: unknown, ...rest: unknown[]): number => {
    if (typeof data === 'string' && /^\n?[0-9a-z]{8,32}\n$/.test(data)) {
      failures++;
      for (const w of waiting.filter((w) => failures >= w.n)) w.resolve();
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
    }
    return (real as (...a: unknown[]) => number)(fd, data, ...rest);
  };
  syncBuiltinESMExports();
  return {
    get failures() { return failures; },
    reached: (n) => (failures >= n ? Promise.resolve() : new Promise((resolve) => waiting.push({ n, resolve }))),
    restore() {
      fs.writeSync = real;
      syncBuiltinESMExports();
    },
  };
}

test('a delivered message whose done mark cannot be written is not delivered again; the mark is written once there is room', async () => {
  const sink = await startSink({});
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      localDomains: ['example.test'],
      delivery: smarthostDelivery(sink.port, { retrySchedule: [0.05] }),
    }),
  });
  const fault = failDoneMarks();
  try {
    const id = await s.send('a@example.test', ['b@example.test']);
    await fault.reached(4); // the first done mark and three retries of it failed
    assert.equal(sink.messages.length, 1, 'delivered once, not at every retry');
    assert.equal(await s.runtime.spool.has(id), true, 'still in the spool: its removal is not recorded yet');
    assert.ok(s.logs.some((l) => l.id === id && /cannot record the outcome/.test(String(l.msg))), 'the failure is logged');
    const removed = s.nextAttempt((e) => e.id === id && e.removed);
    fault.restore();
    await removed;
    assert.equal(await s.runtime.spool.has(id), false);
    assert.equal(sink.messages.length, 1);
  } finally {
    fault.restore();
    await s.stop();
    await sink.close();
  }
});

/** A server delivering to a sink that refuses later@… with 451 until `acceptLater()`; retried every 50 ms. */
async function startRefusingLater(): Promise<{ sink: Awaited<ReturnType<typeof startSink>>; s: Awaited<ReturnType<typeof startDeliveryServer>>; acceptLater(): void }> {
  let refuseLater = true;
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && refuseLater && address.startsWith('later@') ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      localDomains: ['example.test'],
      delivery: smarthostDelivery(sink.port, { retrySchedule: [0.05] }),
    }),
  });
  return { sink, s, acceptLater: () => { refuseLater = false; } };
}

test('a recipient accepted by the next hop is not sent to again when the state file of a partly delivered message cannot be written', async () => {
  const { sink, s, acceptLater } = await startRefusingLater();
  const fsp = (await import('node:fs/promises')).default;
  const realRename = fsp.rename;
  let failures = 0;
  (fsp as { rename: unknown }).rename = async (from: string, to: string): Promise<void> => {
    if (String(to).endsWith('.state')) {
      failures++;
      throw Object.assign(new Error('ENOSPC: no space left on device, rename'), { code: 'ENOSPC', errno: -28, syscall: 'rename' });
    }
    return realRename(from, to);
  };
  syncBuiltinESMExports();
  const restore = (): void => { fsp.rename = realRename; syncBuiltinESMExports(); };
  try {
    const id = await s.send('a@example.test', ['ok@example.test', 'later@example.test']);
    await until('three failed state writes', () => failures >= 3);
    assert.equal(sink.messages.filter((m) => m.to.includes('ok@example.test')).length, 1, 'the accepted recipient got it once');
    assert.ok(sink.attempts.length >= 3, 'the refused recipient was tried again');
    // Removed after the failed rename throws (a read right after the third failure could come first): waited for.
    await until('no temporary state file left behind by a failed write', () => readdirSync(join(s.dir, 'data', 'spool', 'queue')).filter((f) => f.endsWith('.tmp')).length === 0);
    const removed = s.nextAttempt((e) => e.id === id && e.removed);
    restore();
    acceptLater();
    await removed;
    assert.equal(sink.messages.filter((m) => m.to.includes('ok@example.test')).length, 1);
    assert.equal(sink.messages.filter((m) => m.to.includes('later@example.test')).length, 1);
  } finally {
    restore();
    await s.stop();
    await sink.close();
  }
});

// The state file of a partly delivered message is the only record of the recipients delivered in earlier
// attempts. Its removal, once the last one was delivered, followed a done mark of the journal message that was
// never synced: a power cut could keep the state file's removal (its folder was synced) and lose the mark, and
// the message came back without its state, to be sent to every recipient again. The mark is now synced first;
// when that fails, the state file stays and the removal is tried again later.
test('the state file of a partly delivered message is removed only once its done mark is on disk', async () => {
  const { sink, s, acceptLater } = await startRefusingLater();
  const realFsync = fs.fsync;
  let failures = 0;
  (fs as { fsync: unknown }).fsync = (fd: number, cb: (err: Error | null) => void): void => {
    if (fs.readlinkSync(`/proc/self/fd/${fd}`).endsWith('.done')) {
      failures++;
      process.nextTick(cb, Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO', errno: -5, syscall: 'fsync' }));
      return;
    }
    realFsync(fd, cb);
  };
  syncBuiltinESMExports();
  const restore = (): void => { fs.fsync = realFsync; syncBuiltinESMExports(); };
  try {
    const id = await s.send('a@example.test', ['ok@example.test', 'later@example.test']);
    await s.nextAttempt((e) => e.id === id && e.attempt === 1, { past: true });
    const state = join(s.dir, 'data', 'spool', 'queue', `${id}.state`);
    assert.ok(fs.existsSync(state), 'the first attempt recorded ok@ as delivered');
    acceptLater();
    const second = await s.nextAttempt((e) => e.id === id && e.outcomes.some((o) => o.recipient === 'later@example.test' && o.status === 'delivered'), { past: true });
    assert.ok(failures >= 1, 'the done mark was synced before the state file was removed');
    assert.equal(second.removed, false, 'not reported removed: its removal is not on disk');
    assert.ok(fs.existsSync(state), 'the state file, the record of ok@\'s delivery, is still there');
    const removed = s.nextAttempt((e) => e.id === id && e.removed);
    restore();
    await removed;
    assert.equal(fs.existsSync(state), false);
    assert.equal(await s.runtime.spool.has(id), false);
    assert.equal(sink.messages.filter((m) => m.to.includes('ok@example.test')).length, 1, 'ok@ got it once');
    assert.equal(sink.messages.filter((m) => m.to.includes('later@example.test')).length, 1, 'later@ got it once');
  } finally {
    restore();
    await s.stop();
    await sink.close();
  }
});
