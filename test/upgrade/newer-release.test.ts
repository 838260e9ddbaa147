// A data directory a newer release wrote (an administrator going back a release): what this release cannot read
// is refused, naming the file, and left as it is. Taken for damage, a journal segment of newer records was moved
// to quarantine/ as "a write cut short by a crash, never acknowledged" and deleted: the queue looked empty and
// acknowledged mail was never delivered, by either release.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Journal } from '../../engine/spool/journal.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { SpoolSet } from '../../engine/cluster/spool-set.ts';
import { encodeTrailer } from '../../engine/spool/message-file.ts';
import type { SpoolEnvelope } from '../../engine/spool/envelope.ts';
import { keyedRecordSeed } from '../../engine/spool/segment-scan.ts';
import { startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { startSink } from '../helpers/sink.ts';
import { runCli } from '../helpers/cli.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { readInventory, readSightings, SightingRecorder } from '../../engine/pki/index.ts';

const scratch = useScratchDir('postern-newer-');

const KEY = 'ab'.repeat(32);
const envelope = (id: string, version = 1): SpoolEnvelope => ({
  version: version as 1, id, receivedAt: new Date().toISOString(), sender: 'a@example.test', recipients: [{ address: 'b@example.test' }], size: 0,
  session: { listener: 'in', remoteAddress: '127.0.0.1', helo: null, authenticatedUser: null, clientCertificate: null },
  attempts: 0, nextAttemptAt: new Date().toISOString(), errors: [],
});

/**
 * A record as this release writes it (V4), or the same framing under another version number; `field`: a further
 * header field after the checksum, as a newer format might have.
 */
function record(id: string, version = 4, field = ''): Buffer {
  const bytes = Buffer.concat([Buffer.from(`Subject: ${id}\r\n\r\nbody\r\n`), encodeTrailer(envelope(id))]);
  const crc = crc32(bytes, keyedRecordSeed(KEY, id, bytes.length)).toString(16).padStart(8, '0');
  return Buffer.concat([Buffer.from(`POSTERN-RECORD-V${version} ${id} ${bytes.length} ${crc}${field}\n`), bytes, Buffer.from('\n')]);
}

/** A journal folder: segment 1 of this release's records, segment 2 of a newer release's (as the last segment, where a torn tail would be). */
function journalWithNewerSegment(dir: string): { newer: string; files: Map<string, Buffer | null> } {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'key'), `${KEY}\n`);
  writeFileSync(join(dir, '0000000001.seg'), record('0mxaaaaaa0000000001'));
  const newer = join(dir, '0000000002.seg');
  writeFileSync(newer, Buffer.concat([record('0mxaaaaaa0000000002', 5, ' zstd'), record('0mxaaaaaa0000000003', 5, ' zstd')]));
  return { newer, files: snapshot(dir) };
}

/** Every file and folder under `dir`, with the files' bytes. */
function snapshot(dir: string): Map<string, Buffer | null> {
  return new Map(readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort().map((n) => [n, statSync(join(dir, n)).isFile() ? readFileSync(join(dir, n)) : null]));
}

test('a journal segment of records newer than this release is refused with its file named, and nothing in the journal changes', () => {
  const dir = join(mkdtempSync(join(scratch.path, 'postern-newer-')), 'journal');
  const { newer, files } = journalWithNewerSegment(dir);
  for (const writable of [true, false]) {
    assert.throws(() => Journal.open(dir, { writable }), (err: Error) => {
      assert.ok(err.message.startsWith(`${newer}: a record of version 5 at offset 0, written by a newer release`), err.message);
      return true;
    });
  }
  assert.deepEqual(snapshot(dir), files, 'no quarantine, no deletion, no new segment or key');
  // A reader catching up (the queue process's view of a worker's journal) refuses it too.
  assert.throws(() => Journal.openReader(dir).catchUp(), /newer release/);
  // Records of a newer release whose headers read like ours but for the version: two of them in a row are no bit flip.
  writeFileSync(newer, Buffer.concat([record('0mxaaaaaa0000000002', 5), record('0mxaaaaaa0000000003', 5)]));
  assert.throws(() => Journal.open(dir, { writable: true }), /0000000002\.seg: a record of version 5 at offset 0, written by a newer release/);
});

test('a bit flip that raises a record\'s version is damage, not a newer release: the journal is read and the record kept aside', () => {
  const dir = join(mkdtempSync(join(scratch.path, 'postern-newer-')), 'journal');
  mkdirSync(dir);
  writeFileSync(join(dir, 'key'), `${KEY}\n`);
  const flipped = (r: Buffer): Buffer => { const b = Buffer.from(r); b['POSTERN-RECORD-V'.length] ^= 0x01; return b; }; // '4' -> '5'
  // At a segment's start (where a newer release's records would be) and after a record (where they never are).
  writeFileSync(join(dir, '0000000001.seg'), Buffer.concat([flipped(record('0mxaaaaaa0000000001')), record('0mxaaaaaa0000000002')]));
  writeFileSync(join(dir, '0000000002.seg'), Buffer.concat([record('0mxaaaaaa0000000003'), flipped(record('0mxaaaaaa0000000004')), record('0mxaaaaaa0000000005')]));
  const j = Journal.open(dir, { writable: true });
  assert.deepEqual(j.ids().sort(), ['0mxaaaaaa0000000002', '0mxaaaaaa0000000003', '0mxaaaaaa0000000005']);
  assert.deepEqual(j.damage.map((d) => [d.segment.slice(-14), d.offset, d.quarantine !== null]), [['0000000001.seg', 0, true], ['0000000002.seg', record('0mxaaaaaa0000000003').length, true]]);
  j.close();
});

test('postern serve on a data directory whose worker spool a newer release wrote refuses to start, naming the segment; the spool is left as it was', async () => {
  const sink = await startSink({});
  const dataDir = join(mkdtempSync(join(scratch.path, 'postern-newer-')), 'data');
  const { newer, files } = journalWithNewerSegment(join(dataDir, 'spool', 'worker-0', 'journal'));
  try {
    const outcome = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port)}`, dataDir }).catch((err: unknown) => err as Error);
    if (!(outcome instanceof Error)) {
      await outcome.stop();
      assert.fail('the server started on a spool it cannot read');
    }
    assert.match(outcome.message, new RegExp(`${newer}: a record of version 5 at offset 0, written by a newer release of Postern`));
    assert.deepEqual(snapshot(join(dataDir, 'spool', 'worker-0', 'journal')), files);
    assert.equal(sink.messages.length, 0);
    // postern queue says the same instead of listing an incomplete queue.
    const yaml = join(dataDir, '..', 'postern.yaml');
    writeFileSync(yaml, `dataDir: ${JSON.stringify(dataDir)}\n${ONE_WORKER.replace('{PORT:in}', '0')}`);
    const list = await runCli(['queue', 'list', '--config', yaml]);
    assert.notEqual(list.code, 0);
    assert.match(list.stderr, /0000000002\.seg: a record of version 5 .* written by a newer release/);
  } finally {
    await sink.close();
  }
});

test('a message file whose envelope a newer release wrote is reported as such and not delivered', async () => {
  const root = mkdtempSync(join(scratch.path, 'postern-newer-'));
  const spool = new Spool(root);
  await spool.init();
  const id = '0mxaaaaaa0000000009';
  writeFileSync(spool.messagePath(id), Buffer.concat([Buffer.from('Subject: x\r\n\r\nbody\r\n'), encodeTrailer(envelope(id, 2))]));
  await assert.rejects(spool.readForDelivery(id), new RegExp(`${spool.messagePath(id)}: written by a newer release of Postern \\(envelope version 2`));
  const footer = Buffer.concat([Buffer.from('Subject: x\r\n\r\nbody\r\n'), Buffer.from(encodeTrailer(envelope(id)).toString().replace('ENVELOPE-V1', 'ENVELOPE-V2'))]);
  writeFileSync(spool.messagePath(id), footer);
  await assert.rejects(spool.readEnvelope(id), /written by a newer release of Postern \(footer version 2/);
  assert.deepEqual((await new SpoolSet(spool).list()), [id], 'still in the queue');
  spool.close();
});

test('a CA record (issued.json) of a newer release is refused saying so, and left as it is', async () => {
  const dir = mkdtempSync(join(scratch.path, 'postern-newer-pki-'));
  const text = `${JSON.stringify({ version: 2, crlNumber: 3, certificates: {} })}\n`;
  writeFileSync(join(dir, 'issued.json'), text);
  await assert.rejects(readInventory(dir), (err: Error) => {
    assert.equal(err.message, `${join(dir, 'issued.json')}: version 2, written by a newer release of Postern (this release reads version 1); left as it is`);
    return true;
  });
  assert.equal(readFileSync(join(dir, 'issued.json'), 'utf8'), text);
  writeFileSync(join(dir, 'issued.json'), '{"version": 1');
  await assert.rejects(readInventory(dir), /issued\.json: unreadable: /);
});

test('last-seen records a newer release wrote are left as they are (nothing recorded over them); unreadable ones are moved aside; each with a warning naming the file', async () => {
  const dataDir = mkdtempSync(join(scratch.path, 'postern-newer-seen-'));
  mkdirSync(join(dataDir, 'certificates'));
  const sighting = (fp: string) => ({ fingerprintSha256: fp, pinSha256: 'p', serial: '01', subject: 'CN=x', issuer: 'CN=ca', notAfter: '2030-01-01T00:00:00.000Z',
    listener: 'mx', identity: 'x@example.com', verdict: 'verified', lastConnection: 'c1' });
  const newerFile = join(dataDir, 'certificates', 'seen-worker-0.json');
  const newerText = `${JSON.stringify({ version: 2, sightings: [{ fingerprintSha256: 'aa' }] })}\n`;
  writeFileSync(newerFile, newerText);
  const damagedFile = join(dataDir, 'certificates', 'seen-worker-1.json');
  writeFileSync(damagedFile, '{"version":1,"certificates":{"aa":');

  const warnings: string[] = [];
  const errors: unknown[] = [];
  for (const name of ['worker-0', 'worker-1']) {
    const w = new SightingRecorder(dataDir, name, { delayMs: 10, onWarning: (m) => warnings.push(m), onError: (e) => errors.push(e) });
    w.seen(sighting('bb'));
    await w.close();
  }
  assert.deepEqual(errors, []);
  assert.equal(warnings.length, 2, warnings.join('\n'));
  assert.equal(warnings[0], `${newerFile}: version 2, written by a newer release of Postern: left as it is, and this process records no client certificate sightings`);
  assert.equal(readFileSync(newerFile, 'utf8'), newerText, 'the newer file untouched');
  const aside = readdirSync(join(dataDir, 'certificates')).find((n) => n.startsWith('damaged-'));
  assert.match(warnings[1]!, new RegExp(`^${damagedFile}: unreadable \\(.+\\): moved to ${join(dataDir, 'certificates', aside ?? '?')}; this process's client certificate sightings start afresh$`));
  assert.equal(readFileSync(join(dataDir, 'certificates', aside!), 'utf8'), '{"version":1,"certificates":{"aa":', 'the damaged file kept aside');
  // Readers take what they can read: the fresh file of worker 1, not the newer release's.
  assert.deepEqual([...(await readSightings(dataDir)).keys()], ['bb']);
  assert.match(readFileSync(damagedFile, 'utf8'), /"bb"/);
});
