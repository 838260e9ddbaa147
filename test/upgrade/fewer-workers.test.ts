// An upgrade that also lowers `workers` (or a new machine with fewer cores and `workers: auto`): the spool of a
// worker the new server does not run is still delivered by its queue process, which only reads it. A damaged
// record in it was skipped without a word: the worker that would report it at its start never starts, and the
// reader kept what it found to itself. Now the reader of such a spool reports it, with segment and offset. And a
// spool the queue process cannot read at all stopped the delivery of every spool, at every scan.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { startSink } from '../helpers/sink.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-fewer-workers-');

const FIXTURE = new URL('./fixtures/7dd6e65/', import.meta.url).pathname;

test('a damaged record in the spool of a worker the server no longer runs is reported with its segment and offset; the rest is delivered', async () => {
  const root = mkdtempSync(join(scratch.path, 'postern-fewer-workers-'));
  cpSync(FIXTURE, root, { recursive: true });
  // The fixture's server ran two workers; worker-1's journal holds done0-2 (delivered), deferred0-2, held1 and inflight1.
  const segment = join(root, 'data/spool/worker-1/journal/0000000001.seg');
  const bytes = readFileSync(segment);
  const at = bytes.indexOf('Subject: deferred1');
  bytes[at + 2] ^= 0x20; // a flipped bit on the disk
  writeFileSync(segment, bytes);
  const sink = await startSink({});
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port)}`, dataDir: join(root, 'data') });
  try {
    const subjects = (): string[] => sink.messages.map((m) => /^Subject: (\S+)/m.exec(m.data.toString())![1]!);
    await c.waitFor('the other messages of both spools delivered', () => ['deferred0', 'deferred2', 'inflight1', 'deferred3', 'inflight0'].every((s) => subjects().includes(s)));
    const line = await c.waitFor('the damage reported', () => c.logs.find((l) => l.segment === segment));
    assert.equal(line.level, 50);
    assert.match(String(line.msg), new RegExp(`^journal: damaged record in ${segment} at offset \\d+ \\(\\d+ bytes\\) skipped, the records after it recovered; no process of this server writes ${join(root, 'data/spool/worker-1')}: the segment is kept$`));
    assert.ok(Number(line.offset) <= at && at < Number(line.offset) + Number(line.bytes), 'the range holds the damaged message');
    assert.equal(c.logs.filter((l) => l.segment === segment).length, 1, 'reported once, not at every scan');
    assert.ok(!subjects().includes('deferred1'));
    // The rest of that spool is read as its worker would: done stays done, held stays held.
    for (const s of ['done0', 'done1', 'done2', 'held1']) assert.ok(!subjects().includes(s), `${s} must not be delivered`);
  } finally {
    await c.stop();
    await sink.close();
  }
});

test('a spool of a worker the server no longer runs that cannot be read at all costs its own messages, not every spool\'s: reported once, the rest delivered', async () => {
  const root = mkdtempSync(join(scratch.path, 'postern-fewer-workers-'));
  cpSync(FIXTURE, root, { recursive: true });
  // Its journal key lost (a restore that missed it): its V4 records cannot be checked, so none is taken on trust.
  const key = join(root, 'data/spool/worker-1/journal/key');
  unlinkSync(key);
  const sink = await startSink({});
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port)}`, dataDir: join(root, 'data') });
  try {
    const subjects = (): string[] => sink.messages.map((m) => /^Subject: (\S+)/m.exec(m.data.toString())![1]!);
    // worker-0's spool: delivered all the same.
    await c.waitFor('the readable spool delivered', () => ['deferred3', 'inflight0', 'inflight2'].every((s) => subjects().includes(s)));
    const lines = c.logs.filter((l) => l.spool === join(root, 'data/spool/worker-1'));
    assert.equal(lines.length, 1, 'reported once, not at every scan');
    assert.equal(lines[0]!.level, 50);
    assert.match(String(lines[0]!.msg), new RegExp(`^spool ${join(root, 'data/spool/worker-1')} cannot be read: .*0000000001\\.seg: a V4 record at offset 0, and no journal key to check it with: ${key} is missing .*; its messages are not delivered \\(the other spools' are\\)$`));
    assert.ok(!subjects().some((s) => ['deferred0', 'deferred1', 'deferred2', 'inflight1'].includes(s)));
  } finally {
    await c.stop();
    await sink.close();
  }
});
