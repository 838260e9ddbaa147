/**
 * The journal when the disk misbehaves: a damaged record in the middle of a segment, and failed syncs
 * whose lost pages and once-only error reports (Linux) must not cost an acknowledged message.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Journal } from '../../engine/spool/journal.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { installFaultyDisk } from './helpers/faulty-disk.ts';
import { Writable } from 'node:stream';

const scratch = (): string => mkdtempSync(join(tmpdir(), 'postern-journal-faults-'));
const id = (n: number): string => `0000000${String(n).padStart(2, '0')}bbbbbbbbbb`;
const body = (n: number, size = n * 10): Buffer => Buffer.from(`Subject: ${n}\r\n\r\n${'x'.repeat(size)}\r\n`);

function flipByte(path: string, offset: number): void {
  const fd = openSync(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, offset);
    b[0]! ^= 0x01;
    writeSync(fd, b, 0, 1, offset);
  } finally {
    closeSync(fd);
  }
}

/** Every message whose append resolved (was acknowledged) reads back whole from a journal opened anew. */
function assertAcknowledgedRecovered(dir: string, acknowledged: Map<string, Buffer>): Journal {
  const after = Journal.open(dir, { writable: true });
  for (const [mid, bytes] of acknowledged) assert.deepEqual(after.read(mid), bytes, `acknowledged message ${mid} survives`);
  return after;
}

test('one damaged record in the middle of a segment is skipped and kept aside; the records after it are recovered', async () => {
  for (const where of ['body', 'header', 'id'] as const) {
    const dir = scratch();
    const j = Journal.open(dir, { writable: true });
    for (let n = 0; n < 10; n++) await j.append(id(n), [body(n)]);
    j.close();
    const [seg] = readdirSync(dir).filter((n) => n.endsWith('.seg'));
    const path = join(dir, seg!);
    const fifth = readFileSync(path).indexOf(`POSTERN-RECORD-V4 ${id(5)}`);
    const original = readFileSync(path).subarray(fifth, readFileSync(path).indexOf(`POSTERN-RECORD-V4 ${id(6)}`));
    // One flipped bit: in the message, in "POSTERN", or in the id (which must not bring the message back
    // under another id).
    flipByte(path, where === 'body' ? fifth + 70 : where === 'header' ? fifth + 3 : fifth + 'POSTERN-RECORD-V4 '.length + 1);

    const logged: Array<{ level: number; msg: string; segment?: string; offset?: number }> = [];
    const logger = createLogger('info', new Writable({ write(chunk, _e, done) { logged.push(JSON.parse(String(chunk))); done(); } }));
    const spoolRoot = scratch();
    const spool = new Spool(spoolRoot);
    // The spool's journal is `<root>/journal`: move the damaged segment there.
    const { mkdirSync, renameSync } = await import('node:fs');
    mkdirSync(spool.journalDir, { recursive: true });
    renameSync(path, join(spool.journalDir, seg!));
    renameSync(join(dir, 'key'), join(spool.journalDir, 'key')); // its records are checked with their journal's key
    const { damage } = await spool.init({ logger });
    assert.deepEqual((await spool.list()).sort(), [0, 1, 2, 3, 4, 6, 7, 8, 9].map(id), `${where}: every other record is recovered`);
    assert.equal(damage.length, 1);
    assert.equal(damage[0]!.offset, fifth);
    assert.equal(damage[0]!.tail, false);
    const kept = readFileSync(damage[0]!.quarantine!);
    assert.equal(kept.length, original.length, 'exactly the damaged record is kept aside');
    assert.equal(kept.compare(original) !== 0, true, 'as it is on disk, damage included');
    await new Promise((r) => setImmediate(r));
    const error = logged.find((l) => l.level === 50 && /damaged record/.test(l.msg));
    assert.ok(error, `${where}: logged as an error`);
    assert.match(error.msg, new RegExp(`${seg!.replace('.', '\\.')} at offset ${fifth}`));

    // The damaged record never comes back, and its segment goes once the rest is delivered.
    for (const n of [0, 1, 2, 3, 4, 6, 7, 8, 9]) await spool.remove(id(n), { hasState: false });
    spool.close();
    assert.deepEqual(readdirSync(spool.journalDir).filter((n) => n.endsWith('.seg')), []);
    assert.equal(readFileSync(damage[0]!.quarantine!).length, original.length, 'the quarantine file outlives the segment');
  }
});

test('a failed fdatasync: records appended while it ran are written again to a fresh segment, and survive a crash', async () => {
  const disk = installFaultyDisk();
  try {
    const dir = scratch();
    const j = Journal.open(dir, { writable: true });
    await j.append(id(0), [body(0)]);
    disk.failSync(); // the sync of A's flush fails; B and C arrive while it runs
    const sent = [1, 2, 3].map((n) => ({ mid: id(n), bytes: body(n), result: j.append(id(n), [body(n)]) }));
    const settled = await Promise.allSettled(sent.map((s) => s.result));
    assert.equal(disk.failures, 1);
    assert.equal(settled[0]!.status, 'rejected', 'the record whose sync failed is refused (the client gets 451)');
    const acknowledged = new Map([[id(0), body(0)]]);
    sent.forEach((s, i) => { if (settled[i]!.status === 'fulfilled') acknowledged.set(s.mid, s.bytes); });
    assert.equal(acknowledged.size, 3, 'B and C are acknowledged');
    assert.equal(readdirSync(dir).filter((n) => n.endsWith('.seg')).length, 2, 'from a fresh segment, not from the one whose sync failed');
    // kill -9: no close(); the next start reads what is on disk.
    const after = assertAcknowledgedRecovered(dir, acknowledged);
    assert.equal(after.has(id(1)), false);
    after.close();
    j.close();
  } finally {
    disk.restore();
  }
});

test('a write-back error reported to the sync of the zeros written ahead does not let a record sync succeed in its place', async () => {
  const disk = installFaultyDisk();
  try {
    const dir = scratch();
    const j = Journal.open(dir, { writable: true });
    await j.append(id(0), [body(0)]);
    // R1's flush syncs (1st fdatasync); R2 is large enough to extend the zeros, whose sync (2nd) takes the error.
    disk.failSync({ skip: 1 });
    const sent = [{ mid: id(1), bytes: body(1) }, { mid: id(2), bytes: body(2, 900 * 1024) }]
      .map((s) => ({ ...s, result: j.append(s.mid, [s.bytes]) }));
    const settled = await Promise.allSettled(sent.map((s) => s.result));
    assert.equal(disk.failures, 1);
    const acknowledged = new Map([[id(0), body(0)]]);
    sent.forEach((s, i) => { if (settled[i]!.status === 'fulfilled') acknowledged.set(s.mid, s.bytes); });
    assertAcknowledgedRecovered(dir, acknowledged).close();
    assert.equal(acknowledged.has(id(2)), true, 'the record waiting for its flush went to a fresh segment');
    j.close();
  } finally {
    disk.restore();
  }
});
