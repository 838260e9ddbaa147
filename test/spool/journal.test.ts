/** The journal and the spool around it: group commit, recovery after a torn write, done lists, readers. */
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import assert from 'node:assert/strict';
import { until } from '../helpers/wait.ts';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Journal } from '../../engine/spool/journal.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { spoolMessage } from './helpers/spool-message.ts';

const scratch = (): string => mkdtempSync(join(tmpdir(), 'postern-journal-'));
const id = (n: number): string => `0000000${String(n).padStart(2, '0')}aaaaaaaaaa`;
const body = (n: number): Buffer => Buffer.from(`Subject: ${n}\r\n\r\n${'x'.repeat(n * 10)}\r\n`);

test('appends made together share one flush and survive a reopen', async () => {
  const dir = scratch();
  const j = Journal.open(dir, { writable: true });
  await Promise.all(Array.from({ length: 40 }, (_, n) => j.append(id(n), [body(n)])));
  assert.ok(j.flushes <= 3, `${j.flushes} flushes for 40 appends`);
  j.close();
  const again = Journal.open(dir, { writable: true });
  assert.equal(again.size, 40);
  for (let n = 0; n < 40; n++) assert.deepEqual(again.read(id(n)), body(n));
  again.close();
});

test('records appended while a flush is in flight are written together by the next one, and can be read before it', async () => {
  const dir = scratch();
  const j = Journal.open(dir, { writable: true });
  const first = j.append(id(1), [body(1)]); // starts a flush at once
  const more = Array.from({ length: 5 }, (_, n) => j.append(id(n + 2), [body(n + 2)]));
  assert.deepEqual(j.read(id(4)), body(4), 'a record not flushed yet is still read back whole');
  await Promise.all([first, ...more]);
  assert.ok(j.flushes <= 3, `${j.flushes} flushes`);
  j.close();
  const again = Journal.open(dir, { writable: false });
  for (let n = 1; n <= 6; n++) assert.deepEqual(again.read(id(n)), body(n));
  again.close();
});

test('a failed write (a full disk) fails the appends of its flush, and later records go to a new segment', async () => {
  const fs = (await import('node:fs')).default; // the CommonJS object: patching it and syncing reaches the journal's named imports
  const { syncBuiltinESMExports } = await import('node:module');
  const dir = scratch();
  const j = Journal.open(dir, { writable: true });
  await j.append(id(1), [body(1)]);
  const real = fs.writevSync;
  fs.writevSync = () => { throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }); };
  syncBuiltinESMExports();
  try {
    await assert.rejects(j.append(id(2), [body(2)]), /ENOSPC/);
  } finally {
    fs.writevSync = real;
    syncBuiltinESMExports();
  }
  assert.equal(j.has(id(2)), false, 'a refused record is not in the journal');
  await j.append(id(3), [body(3)]);
  assert.equal(readdirSync(dir).filter((n) => n.endsWith('.seg')).length, 2, 'nothing follows a failed write in its segment');
  j.close();
  const again = Journal.open(dir, { writable: false });
  assert.deepEqual(again.ids().sort(), [id(1), id(3)]);
  assert.deepEqual(again.read(id(3)), body(3));
  again.close();

  // A record read before its flush is written out by the read; if that write fails, its flush writes it again.
  const dir2 = scratch();
  const k = Journal.open(dir2, { writable: true });
  const first = k.append(id(4), [body(4)]); // its flush is in flight
  const second = k.append(id(5), [body(5)]); // waits in memory for the next flush
  fs.writevSync = () => { throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' }); };
  syncBuiltinESMExports();
  try {
    assert.throws(() => k.read(id(5)), /EIO/);
  } finally {
    fs.writevSync = real;
    syncBuiltinESMExports();
  }
  await Promise.all([first, second]);
  k.close();
  const reread = Journal.open(dir2, { writable: false });
  assert.deepEqual(reread.read(id(5)), body(5), 'acknowledged only once really written');
  reread.close();
});

test('a torn record at the end is ignored; new records go to a new segment', async () => {
  const dir = scratch();
  const j = Journal.open(dir, { writable: true });
  await j.append(id(1), [body(1)]);
  await j.append(id(2), [body(2)]);
  j.close();
  const [seg] = readdirSync(dir).filter((n) => n.endsWith('.seg'));
  writeAt(join(dir, seg!), recordsEnd(join(dir, seg!)), `POSTERN-RECORD-V4 ${id(3)} 500 00000000\nSubject: half`); // a crash mid-write
  const again = Journal.open(dir, { writable: true });
  assert.deepEqual(again.ids().sort(), [id(1), id(2)]);
  await again.append(id(4), [body(4)]);
  assert.equal(readdirSync(dir).filter((n) => n.endsWith('.seg')).length, 2, 'never appends after a torn tail');
  again.close();
  assert.deepEqual(Journal.open(dir, { writable: false }).ids().sort(), [id(1), id(2), id(4)]);
});

/** Where the records of a segment end and the zeros written ahead of them begin. */
function recordsEnd(path: string): number {
  const end = readFileSync(path).indexOf(0);
  assert.ok(end > 0, 'the segment has zeros after its records');
  return end;
}

function writeAt(path: string, offset: number, text: string | Buffer): void {
  const fd = openSync(path, 'r+');
  try { writeSync(fd, typeof text === 'string' ? Buffer.from(text) : text, 0, undefined, offset); } finally { closeSync(fd); }
}

test('records overwrite zeros written ahead of them; a record whose pages reached the disk only in part is caught by its checksum', async () => {
  const dir = scratch();
  const j = Journal.open(dir, { writable: true });
  for (let n = 1; n <= 3; n++) await j.append(id(n), [body(n * 50)]);
  j.close();
  const [seg] = readdirSync(dir).filter((n) => n.endsWith('.seg'));
  const path = join(dir, seg!);
  assert.ok(statSync(path).size >= 1024 * 1024, 'a megabyte of zeros was written ahead');
  assert.deepEqual(Journal.open(dir, { writable: false }).ids().sort(), [id(1), id(2), id(3)], 'the zeros are not records');
  // The third record's middle never reached the disk (its header and its end did): zeros inside it.
  const third = readFileSync(path).indexOf(`POSTERN-RECORD-V4 ${id(3)}`);
  writeAt(path, third + 200, Buffer.alloc(100));
  const again = Journal.open(dir, { writable: true });
  assert.deepEqual(again.ids().sort(), [id(1), id(2)], 'the damaged record is not taken for a message');
  assert.deepEqual(again.read(id(2)), body(100));
  again.close();
});

test('records whose checksum covers their bytes alone (V2) are still read, and checked', () => {
  const dir = scratch();
  const record = (n: number, damaged = false): Buffer => {
    const b = body(n);
    const crc = crc32(b).toString(16).padStart(8, '0');
    return Buffer.concat([Buffer.from(`POSTERN-RECORD-V2 ${id(n)} ${b.length} ${crc}\n`), damaged ? Buffer.from(b.toString().replace('Subject', 'Subjecd')) : b, Buffer.from('\n')]);
  };
  writeFileSync(join(dir, '0000000001.seg'), Buffer.concat([record(1), record(2, true), record(3)]));
  const j = Journal.open(dir, { writable: false });
  assert.deepEqual(j.ids().sort(), [id(1), id(3)]);
  assert.deepEqual(j.read(id(3)), body(3));
});

test('records written before checksums (V1) are still read', () => {
  const dir = scratch();
  const record = (n: number): Buffer => Buffer.concat([Buffer.from(`POSTERN-RECORD-V1 ${id(n)} ${body(n).length}\n`), body(n), Buffer.from('\n')]);
  writeFileSync(join(dir, '0000000001.seg'), Buffer.concat([record(1), record(2)]));
  const j = Journal.open(dir, { writable: false });
  assert.deepEqual(j.ids().sort(), [id(1), id(2)]);
  assert.deepEqual(j.read(id(2)), body(2));
  j.close();
});

test('done messages stay done after a reopen; a segment with nothing left is deleted', async () => {
  const dir = scratch();
  const j = Journal.open(dir, { writable: true });
  await j.append(id(1), [body(1)]);
  await j.append(id(2), [body(2)]);
  assert.equal(j.markDone(id(1)), true);
  assert.equal(j.markDone(id(1)), false);
  j.close();
  const again = Journal.open(dir, { writable: true });
  assert.deepEqual(again.ids(), [id(2)]);
  assert.equal(again.read(id(1)), null);
  again.markDone(id(2)); // the old segment takes no more records: nothing left, so it goes
  assert.deepEqual(readdirSync(dir).filter((n) => n !== 'key'), []); // the journal key stays
  again.close();
});

test('a reader marks a message done; the server sees it at its next refresh', async () => {
  const dir = scratch();
  const server = Journal.open(dir, { writable: true });
  await server.append(id(1), [body(1)]);
  await server.append(id(2), [body(2)]);
  const reader = Journal.open(dir, { writable: false });
  assert.deepEqual(reader.ids().sort(), [id(1), id(2)]);
  assert.equal(reader.markDone(id(2)), true);
  reader.close();
  server.markDone(id(1));
  assert.equal(server.has(id(2)), true);
  server.refresh();
  assert.equal(server.has(id(2)), false);
  server.close();
  assert.deepEqual(Journal.open(dir, { writable: false }).ids(), []);
});

test('the spool keeps small messages in the journal and large ones in files, behind one interface', async () => {
  const root = scratch();
  const spool = new Spool(root);
  await spool.init();
  const commit = async (size: number): Promise<string> => {
    const chunks = [Buffer.from(`Subject: ${size}\r\n\r\n`)];
    for (let sent = 0; sent < size; sent += 64 * 1024) chunks.push(Buffer.alloc(Math.min(64 * 1024, size - sent), 0x61));
    return spoolMessage(spool, chunks);
  };
  const small = await commit(2000);
  const large = await commit(3 * 1024 * 1024);
  assert.deepEqual(readdirSync(spool.queueDir), [`${large}.msg`]);
  assert.deepEqual(await spool.list(), [small, large].sort());
  const read = await spool.readForDelivery(small);
  assert.equal(read.envelope.sender, 'a@example.com');
  assert.equal(read.message.length, 2000 + 'Subject: 2000\r\n\r\n'.length);
  assert.equal((await spool.readForDelivery(large)).message.length, 3 * 1024 * 1024 + 'Subject: 3145728\r\n\r\n'.length);

  // A state file is kept for a journal message across a restart, and removed with it.
  await spool.updateState(small, { attempts: 1, nextAttemptAt: new Date().toISOString(), errors: ['x'], recipients: [{ address: 'b@example.com' }] });
  writeFileSync(join(spool.queueDir, 'zzzzzzzzzzzzzz.state'), '{}'); // an orphan
  spool.close();
  const restarted = new Spool(root);
  assert.equal((await restarted.init()).removedOrphans, 1);
  assert.equal((await restarted.readEnvelope(small)).attempts, 1);
  assert.deepEqual((await restarted.scan()).map((e) => [e.id, e.hasState]), [[small, true], [large, false]].sort());

  // What `postern queue delete` does from another process.
  const reader = new Spool(root);
  await reader.remove(small);
  assert.equal(await reader.has(small), false);
  assert.deepEqual((await restarted.scan()).map((e) => e.id), [large]);
  await restarted.remove(large, { hasState: false });
  assert.deepEqual(await restarted.list(), []);
  restarted.close();
  reader.close();
});

test('full segments are closed for appends and deleted once everything in them is done', async () => {
  const dir = scratch();
  const j = Journal.open(dir, { writable: true, segmentBytes: 4096 });
  await Promise.all(Array.from({ length: 30 }, (_, n) => j.append(id(n), [body(40)])));
  const segments = (): string[] => readdirSync(dir).filter((n) => n.endsWith('.seg')).sort();
  const first = segments();
  assert.ok(first.length >= 3, `${first.length} segments`);
  assert.equal(j.segments, first.length);
  // Deliver in order: the oldest segments empty and go, the active one stays.
  for (let n = 0; n < 29; n++) j.markDone(id(n));
  // A segment whose zeros written ahead are still being synced goes once that sync ends (loaded machine).
  await until('the emptied segments deleted', () => segments().length === 1, { timeoutMs: 30_000 });
  assert.deepEqual(segments(), [first.at(-1)!]);
  assert.deepEqual(j.ids(), [id(29)]);
  j.close();
  assert.deepEqual(Journal.open(dir, { writable: false }).ids(), [id(29)]);
});

test('a spooled message whose bytes changed on disk is refused for delivery: a journal record by its CRC-32, a message file by its SHA-256', async () => {
  const root = scratch();
  const spool = new Spool(root);
  await spool.init();
  const commit = (text: string): Promise<string> => spoolMessage(spool, [Buffer.from(text)]);
  const small = await commit('Subject: small\r\n\r\nPay 100 EUR\r\n');
  const large = await commit(`Subject: large\r\n\r\nPay 100 EUR\r\n${'y'.repeat(2 * 1024 * 1024)}\r\n`);
  assert.equal((await spool.readForDelivery(small)).message.toString().includes('Pay 100 EUR'), true);
  assert.equal((await spool.readForDelivery(large)).message.toString().includes('Pay 100 EUR'), true);
  const flip = (path: string): void => {
    const at = readFileSync(path).indexOf('Pay 100 EUR');
    assert.ok(at > 0, `${path} holds the message`);
    writeAt(path, at + 4, '9');
  };
  const [seg] = readdirSync(spool.journalDir).filter((n) => n.endsWith('.seg'));
  flip(join(spool.journalDir, seg!));
  flip(spool.messagePath(large));
  await assert.rejects(spool.readForDelivery(small), /damaged \(CRC-32 mismatch\)/);
  await assert.rejects(spool.readForDelivery(large), /damaged \(SHA-256 mismatch\)/);
  spool.close();
});
