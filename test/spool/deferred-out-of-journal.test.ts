// A journal segment is deleted only once every record in it is done, so one message deferred for days kept its
// whole segment — mail delivered long ago around it — on disk, and during an outage of one destination every
// segment written meanwhile, until those messages expired. A message deferred a second time now leaves the
// journal for a file of its own, written and synced before its record is marked done, and its segment goes
// with the mail delivered around it. A move cut short between the two (both copies on disk) is still one message,
// read, listed and removed once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statfsSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useScratchDir } from '../helpers/scratch.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { encodeTrailer } from '../../engine/spool/message-file.ts';
import { spoolMessage } from './helpers/spool-message.ts';
import { startDeliveryServer, fakeResolver } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { freePort } from '../helpers/free-port.ts';
import { until } from '../helpers/wait.ts';
import { needsTmpfs, testFilesystem } from '../helpers/tmpfs.ts';
import { RESERVE_BYTES } from '../../engine/spool/reserve.ts';

const scratch = useScratchDir('postern-out-of-journal-');

const segments = async (spool: Spool): Promise<string[]> => (await readdir(spool.journalDir)).filter((n) => n.endsWith('.seg'));
const state = { attempts: 2, nextAttemptAt: new Date(Date.now() + 3_600_000).toISOString(), recipients: [{ address: 'b@example.com' }], errors: ['b@example.com: 451 try later'] };

test('a deferred message moved out of the journal: its segment goes with the mail delivered around it; the message reads back the same, listed once', async () => {
  const spool = new Spool(join(scratch.path, 'one'), { journalSegmentBytes: 8 * 1024 });
  await spool.init();
  const body = (i: number): Buffer => Buffer.from(`Subject: ${i}\r\n\r\n${'x'.repeat(1500)}\r\n`);
  const ids: string[] = [];
  for (let i = 0; i < 20; i++) ids.push(await spoolMessage(spool, [body(i)]));
  const deferred = ids[1]!;
  const before = await spool.readForDelivery(deferred, { hasState: false });
  await spool.updateState(deferred, state);
  for (const id of ids) if (id !== deferred) await spool.remove(id, { hasState: false });
  // Its segment (the first: full, written long before the last message) is kept for it alone.
  const pinned = await segments(spool);
  assert.ok(pinned.includes('0000000001.seg'), `the deferred message keeps its segment: ${pinned.join(' ')}`);

  assert.equal(await spool.moveOutOfJournal(deferred), true);
  const left = await segments(spool);
  assert.ok(!left.includes('0000000001.seg'), `its segment is deleted (before: ${pinned.join(' ')}; now: ${left.join(' ')})`);
  assert.ok(existsSync(spool.messagePath(deferred)));
  assert.deepEqual((await spool.scan()).map((e) => [e.id, e.hasState]), [[deferred, true]]);
  const after = await spool.readForDelivery(deferred);
  assert.deepEqual(after.message, before.message);
  assert.equal(after.envelope.attempts, 2, 'its state still applies');
  assert.match(after.envelope.sha256 ?? '', /^[0-9a-f]{64}$/, 'the file carries the SHA-256 readForDelivery checks');
  assert.equal(await spool.moveOutOfJournal(deferred), false, 'a second move finds nothing to move');

  await spool.remove(deferred);
  assert.deepEqual(await spool.scan(), []);
  spool.close();
  const again = new Spool(join(scratch.path, 'one'));
  await again.init();
  assert.deepEqual(await again.scan(), [], 'nothing comes back at the next start');
  again.close();
});

test('a move cut short between its file and its done mark: one message, read from either copy, removed with both', async () => {
  const root = join(scratch.path, 'cut');
  const spool = new Spool(root);
  await spool.init();
  const id = await spoolMessage(spool, [Buffer.from('Subject: both\r\n\r\nbody\r\n')]);
  await spool.updateState(id, state);
  const { envelope, message } = await spool.readForDelivery(id, { hasState: false });
  // What moveOutOfJournal writes, without the done mark that follows it (the process was killed in between).
  await writeFile(spool.messagePath(id), Buffer.concat([message, encodeTrailer(envelope)]));
  spool.close();

  const restarted = new Spool(root);
  await restarted.init();
  assert.deepEqual((await restarted.scan()).map((e) => e.id), [id], 'listed once');
  assert.deepEqual(await restarted.list(), [id]);
  assert.deepEqual((await restarted.readForDelivery(id)).message, message);
  await restarted.remove(id);
  assert.equal(existsSync(restarted.messagePath(id)), false, 'the file goes with the record');
  assert.deepEqual(await restarted.scan(), []);
  restarted.close();
  const third = new Spool(root);
  await third.init();
  assert.deepEqual(await third.scan(), [], 'and neither comes back');
  third.close();
});

test('the queue runner moves a message out of the journal at its second deferral, not at its first (a greylisting next hop takes the retry)', async () => {
  const deadPort = await freePort();
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: deadPort }, tls: { mode: 'none' }, retrySchedule: [0.2] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'down.test': [{ exchange: 'mx.down.test', priority: 10 }] }, { 'mx.down.test': ['127.0.0.1'] }),
  });
  try {
    const spool = s.runtime.spool;
    // Looked for in the journal when it may be there: not again once it has a file of its own.
    const moves: string[] = [];
    const move = spool.moveOutOfJournal.bind(spool);
    spool.moveOutOfJournal = (which: string) => { moves.push(which); return move(which); };
    // Looked at as the first deferral ends: looked at once the test had the event, the retry 0.2 s on could have
    // moved it already (a machine that descheduled the test that long).
    const fileAfterFirst = new Map<string, boolean>();
    s.queue!.onAttempt((e) => { if (e.attempt === 1) fileAfterFirst.set(e.id, existsSync(spool.messagePath(e.id))); });
    const id = await s.send('sender@example.com', ['someone@down.test'], 'Subject: deferred\r\n\r\nbody\r\n');
    await s.nextAttempt((e) => e.id === id && e.attempt === 1, { past: true });
    assert.equal(fileAfterFirst.get(id), false, 'still in the journal after the first deferral');
    await s.nextAttempt((e) => e.id === id && e.attempt === 2, { past: true });
    await until('moved out of the journal after the second deferral', () => existsSync(spool.messagePath(id)));
    assert.deepEqual((await spool.scan()).filter((e) => e.id === id).length, 1);
    await s.nextAttempt((e) => e.id === id && e.attempt === 3, { past: true });
    assert.equal((await spool.readEnvelope(id)).attempts >= 3, true, 'attempted again from its file');
    assert.deepEqual(moves, [id], 'moved at its second deferral, not looked for in the journal at its third');
  } finally {
    await s.stop();
  }
});

test('a move out of the journal leaves a released reserve\'s room to the bookkeeping: the message stays in the journal until there is room', { skip: needsTmpfs() }, async () => {
  const mount = testFilesystem(32);
  const deadPort = await freePort();
  const s = await startDeliveryServer({
    dataDir: join(mount.dir, 'data'),
    config: configYaml({
      listeners: [testListener('in')],
      spool: { minFreeBytes: 0 },
      delivery: { enabled: true, route: { mx: true, port: deadPort }, tls: { mode: 'none' }, retrySchedule: [0.5] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'down.test': [{ exchange: 'mx.down.test', priority: 10 }] }, { 'mx.down.test': ['127.0.0.1'] }),
  });
  try {
    const spool = s.runtime.spool;
    const reserve = spool.reserve.path;
    await until('the reserve made', () => { try { return statSync(reserve).size === RESERVE_BYTES; } catch { return false; } });
    const firstDeferral = s.nextAttempt((e) => e.attempt === 1);
    const id = await s.send('sender@example.com', ['someone@down.test'], `Subject: large\r\n\r\n${`${'x'.repeat(76)}\r\n`.repeat(5000)}`);
    await firstDeferral;
    // At once (before the next attempt can start): the disk nearly full, and the reserve released for the
    // bookkeeping, as the runner does on ENOSPC; too little room left for it to be made again.
    const free = statfsSync(mount.dir);
    writeFileSync(join(mount.dir, 'filler'), Buffer.alloc(free.bavail * free.bsize - 2 * 1024 * 1024));
    truncateSync(reserve, 0);
    const before = statfsSync(mount.dir).bavail;
    await s.nextAttempt((e) => e.id === id && e.attempt === 3, { past: true });
    assert.equal(existsSync(spool.messagePath(id)), false, 'not copied out of the journal into the room kept for the bookkeeping');
    assert.ok(statfsSync(mount.dir).bavail >= before - 2, 'the free room is what it was (a state file aside)');
    assert.deepEqual((await spool.scan()).map((e) => e.id), [id], 'still queued, from the journal');
  } finally {
    await s.stop();
    mount.unmount();
  }
});
