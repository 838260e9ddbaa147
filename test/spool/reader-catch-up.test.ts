// The queue process reads every worker's journal as a reader. Reading the whole journal again for each new
// message made the queue process's cost per message grow with the length of the queue: with 40,000
// messages waiting, its event loop stalled past its watchdog's limit and it was killed and restarted over
// and over (each time delivering again what was in flight). A reader now reads only what was appended since
// its last look, and a first look at a long journal is taken in steps.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs, { mkdtempSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Journal } from '../../engine/spool/journal.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { spoolMessage } from './helpers/spool-message.ts';

const scratch = (): string => mkdtempSync(join(tmpdir(), 'postern-reader-'));

/** Bytes read from journal segment files in this process, from now on. */
function countSegmentReads(): { readonly bytes: number; restore(): void } {
  const real = { openSync: fs.openSync, closeSync: fs.closeSync, readSync: fs.readSync };
  const segmentFds = new Set<number>();
  let bytes = 0;
  Object.assign(fs, {
    openSync(path: fs.PathLike, ...rest: unknown[]): number {
      const fd = (real.openSync as (...a: unknown[]) => number)(path, ...rest);
      if (String(path).endsWith('.seg')) segmentFds.add(fd);
      return fd;
    },
    closeSync(fd: number): void { segmentFds.delete(fd); real.closeSync(fd); },
    readSync(fd: number, ...rest: unknown[]): number {
      const n = (real.readSync as (...a: unknown[]) => number)(fd, ...rest);
      if (segmentFds.has(fd)) bytes += n;
      return n;
    },
  });
  syncBuiltinESMExports();
  return {
    get bytes() { return bytes; },
    restore() { Object.assign(fs, real); syncBuiltinESMExports(); },
  };
}

test('a reader reads only what the writer appended since its last look, not the whole journal for each new message', async () => {
  const root = scratch();
  const writer = new Spool(join(root, 'w'), { journalSegmentBytes: 256 * 1024 });
  await writer.init();
  const filler = `Subject: filler\r\n\r\n${'x'.repeat(1000)}\r\n`;
  for (let batch = 0; batch < 4; batch++) await Promise.all(Array.from({ length: 500 }, () => spoolMessage(writer, [Buffer.from(filler)])));
  const reads = countSegmentReads();
  try {
    const reader = new Spool(join(root, 'w')); // as the queue process sees a worker's spool
    assert.equal((await reader.scan()).length, 2000);
    const journalBytes = reads.bytes;
    assert.ok(journalBytes > 2000 * 1000, `the first look reads the journal (${journalBytes} bytes)`);
    const fresh: string[] = [];
    for (let n = 0; n < 50; n++) {
      const mid = await spoolMessage(writer, [Buffer.from(`Subject: fresh ${n}\r\n\r\nbody\r\n`)]);
      fresh.push(mid);
      const { message } = await reader.readForDelivery(mid, { hasState: false });
      assert.match(message.toString(), new RegExp(`Subject: fresh ${n}\r\n`));
    }
    const perMessage = (reads.bytes - journalBytes) / fresh.length;
    assert.ok(perMessage < 128 * 1024, `${Math.round(perMessage)} bytes of the journal read per new message (the journal holds ${journalBytes})`);
    // Delivered messages leave, the others stay listed.
    for (const mid of fresh.slice(0, 10)) await reader.remove(mid, { hasState: false });
    const listed = new Set((await reader.scan()).map((e) => e.id));
    assert.equal(listed.size, 2040);
    assert.ok(fresh.slice(10).every((mid) => listed.has(mid)) && !listed.has(fresh[0]!));
    reader.close();
  } finally {
    reads.restore();
    writer.close();
  }
});

test('a first look at a long journal is taken in steps; a message just appended is found at once', () => {
  const dir = scratch();
  const writer = Journal.open(dir, { writable: true, segmentBytes: 64 * 1024 });
  const id = (n: number): string => `00000${String(n).padStart(5, '0')}aaaaaaaaaa`;
  const bytes = (n: number): Buffer => Buffer.from(`Subject: ${n}\r\n\r\n${'y'.repeat(900)}\r\n`);
  const appended: Array<Promise<void>> = [];
  for (let n = 0; n < 400; n++) appended.push(writer.append(id(n), [bytes(n)]));
  return Promise.all(appended).then(() => {
    const reader = Journal.openReader(dir);
    assert.equal(reader.catchUp(0), false, 'one segment at a time');
    assert.ok(reader.has(id(399)), 'the newest segment is read first');
    assert.ok(!reader.has(id(0)));
    let steps = 1;
    while (!reader.catchUp(128 * 1024)) steps++;
    assert.ok(steps >= 3, `${steps} steps`);
    assert.equal(reader.size, 400);
    for (const n of [0, 200, 399]) assert.deepEqual(reader.read(id(n)), bytes(n));
    reader.close();
    writer.close();
  });
});

test('a segment the writer deleted and made again under the same number is read afresh', async () => {
  const dir = scratch();
  const id = (n: number): string => `00000${String(n).padStart(5, '0')}bbbbbbbbbb`;
  let writer = Journal.open(dir, { writable: true });
  await writer.append(id(1), [Buffer.from('first\r\n')]);
  const reader = Journal.openReader(dir);
  reader.catchUp();
  assert.deepEqual(reader.read(id(1)), Buffer.from('first\r\n'));
  assert.ok(reader.markDone(id(1))); // delivered: the queue process marks it done
  writer.close();
  // The writer starts again: the segment has nothing left and is deleted. Started once more, on an empty
  // folder, it numbers its segments from 1 again.
  Journal.open(dir, { writable: true }).close();
  writer = Journal.open(dir, { writable: true });
  await writer.append(id(2), [Buffer.from('second message\r\n')]);
  assert.ok(fs.existsSync(join(dir, '0000000001.seg')));
  reader.catchUp(0);
  assert.deepEqual(reader.ids(), [id(2)]);
  assert.deepEqual(reader.read(id(2)), Buffer.from('second message\r\n'));
  // A record appended to it later is seen too, and a done mark of the writer's other reader is applied.
  await writer.append(id(3), [Buffer.from('third\r\n')]);
  reader.catchUp(0);
  assert.deepEqual(reader.ids().sort(), [id(2), id(3)]);
  const cli = Journal.open(dir, { writable: false });
  assert.ok(cli.markDone(id(2)));
  cli.close();
  reader.catchUp(0);
  assert.deepEqual(reader.ids(), [id(3)]);
  reader.close();
  writer.close();
});
