/**
 * A message's own bytes are attacker-chosen, and a record is stored as they are: a client can put a whole,
 * well-formed journal record (header, bytes, checksum, with an envelope of its choosing: any recipients)
 * inside its message. When that message's record is damaged (a bad block, a crash that kept its later pages
 * but not its header), reading resynchronises on the next thing that looks like a record; it must never take
 * the one inside the message for a message of the spool. Real files, the journal's own recovery.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { Journal } from '../../engine/spool/journal.ts';
import { encodeTrailer } from '../../engine/spool/message-file.ts';
import type { SpoolEnvelope } from '../../engine/spool/envelope.ts';

const scratch = (): string => mkdtempSync(join(tmpdir(), 'postern-journal-forgery-'));
const id = (n: number): string => `0000000${String(n).padStart(2, '0')}cccccccccc`;
const FORGED = '00000099ffffffffff';

function envelope(mid: string, to: string): SpoolEnvelope {
  return {
    version: 1, id: mid, receivedAt: new Date().toISOString(), sender: 'a@example.com', recipients: [{ address: to }], size: 0,
    session: { listener: 'x', remoteAddress: '127.0.0.1', helo: null, authenticatedUser: 'admin', clientCertificate: null },
    attempts: 0, nextAttemptAt: new Date().toISOString(), errors: [],
  };
}

/** A complete record of every version (V3: CRC-32 seeded with the public id and length; V4: with a guessed key). */
function forgedRecords(): Buffer[] {
  const bytes = Buffer.concat([Buffer.from('Subject: forged\r\n\r\nspam\r\n'), encodeTrailer(envelope(FORGED, 'victim@elsewhere.example'))]);
  const v3 = crc32(bytes, crc32(`${FORGED} ${bytes.length}`)).toString(16).padStart(8, '0');
  const v2 = crc32(bytes).toString(16).padStart(8, '0');
  // V4 starts from the journal's secret key: the client can only guess one.
  const v4 = crc32(bytes, crc32(`${FORGED} ${bytes.length}`, crc32('0'.repeat(64)))).toString(16).padStart(8, '0');
  return [
    Buffer.from(`POSTERN-RECORD-V4 ${FORGED} ${bytes.length} ${v4}\n`),
    Buffer.from(`POSTERN-RECORD-V3 ${FORGED} ${bytes.length} ${v3}\n`), Buffer.from(`POSTERN-RECORD-V2 ${FORGED} ${bytes.length} ${v2}\n`),
    Buffer.from(`POSTERN-RECORD-V1 ${FORGED} ${bytes.length}\n`),
  ].map((h) => Buffer.concat([h, bytes, Buffer.from('\n')]));
}

function overwrite(path: string, offset: number, bytes: Buffer): void {
  const fd = openSync(path, 'r+');
  try { writeSync(fd, bytes, 0, bytes.length, offset); } finally { closeSync(fd); }
}

function byteAt(path: string, offset: number): number {
  const fd = openSync(path, 'r');
  try { const b = Buffer.alloc(1); readSync(fd, b, 0, 1, offset); return b[0]!; } finally { closeSync(fd); }
}

for (const forged of forgedRecords()) {
  const version = forged.toString('latin1', 0, 17);
  for (const damage of ['header', 'length', 'body', 'last record'] as const) {
    test(`a ${version} record inside a message is never taken for a message (damaged ${damage})`, async () => {
      const dir = scratch();
      const j = Journal.open(dir, { writable: true });
      const plain = (n: number): Buffer => Buffer.from(`Subject: ${n}\r\n\r\nhello ${n}\r\n`);
      const hostile = Buffer.concat([Buffer.from('Subject: innocent\r\n\r\nbefore\r\n'), forged, Buffer.from('after\r\n')]);
      await j.append(id(1), [plain(1)]);
      await j.append(id(2), [hostile]);
      if (damage !== 'last record') await j.append(id(3), [plain(3)]);
      j.close();
      const [seg] = readdirSync(dir).filter((n) => n.endsWith('.seg'));
      const path = join(dir, seg!);
      const data = readFileSync(path);
      const at = data.indexOf(`${id(2)} `) - 'POSTERN-RECORD-V4 '.length;
      assert.ok(at > 0);
      if (damage === 'header') overwrite(path, at + 2, Buffer.from([byteAt(path, at + 2) ^ 1])); // the page with the header lost or flipped
      if (damage === 'length') overwrite(path, at + 'POSTERN-RECORD-V4 '.length + id(2).length + 1, Buffer.from('9')); // a length digit
      if (damage === 'body' || damage === 'last record') overwrite(path, at + 60, Buffer.from([byteAt(path, at + 60) ^ 1]));
      if (damage === 'last record') {
        // A full segment, closed: nothing after its last record, no zeros ahead of it.
        const fd = openSync(path, 'r+');
        const end = data.indexOf(Buffer.alloc(64), at);
        const { ftruncateSync } = await import('node:fs');
        ftruncateSync(fd, end);
        closeSync(fd);
        assert.equal(statSync(path).size, end);
      }
      const again = Journal.open(dir, { writable: true });
      const ids = again.ids();
      assert.ok(!ids.includes(FORGED), `the record inside message ${id(2)} was taken for message ${FORGED}`);
      assert.ok(ids.includes(id(1)));
      if (damage !== 'last record') assert.deepEqual(again.read(id(3)), plain(3), 'the record after the damaged one is recovered');
      assert.ok(again.damage.length >= 1, 'the damage is reported');
      again.close();
    });
  }
}

test('the journal key is the server user\'s only; without it, keyed records are not read on trust but refused with the paths', async () => {
  const dir = scratch();
  const j = Journal.open(dir, { writable: true });
  await j.append(id(1), [Buffer.from('Subject: 1\r\n\r\nx\r\n')]);
  j.close();
  assert.equal(statSync(join(dir, 'key')).mode & 0o777, 0o600);
  assert.deepEqual(Journal.open(dir, { writable: false }).ids(), [id(1)], 'a reader (postern queue) checks with the same key');
  const { unlinkSync, writeFileSync } = await import('node:fs');
  unlinkSync(join(dir, 'key'));
  assert.throws(() => Journal.open(dir, { writable: true }), (err: Error) => {
    assert.match(err.message, /0000000001\.seg: a V4 record at offset 0, and no journal key to check it with: .*\/key is missing/);
    return true;
  });
  writeFileSync(join(dir, 'key'), 'not a key\n');
  assert.throws(() => Journal.open(dir, { writable: true }), /\/key: not a journal key \(64 hexadecimal digits\)/);
});

test('a journal from before the key (V3 records, no key file) is read, then gets a key and V4 records', async () => {
  const dir = scratch();
  const { writeFileSync } = await import('node:fs');
  const v3 = (n: number): Buffer => {
    const bytes = Buffer.from(`Subject: ${n}\r\n\r\nold ${n}\r\n`);
    const crc = crc32(bytes, crc32(`${id(n)} ${bytes.length}`)).toString(16).padStart(8, '0');
    return Buffer.concat([Buffer.from(`POSTERN-RECORD-V3 ${id(n)} ${bytes.length} ${crc}\n`), bytes, Buffer.from('\n')]);
  };
  writeFileSync(join(dir, '0000000001.seg'), Buffer.concat([v3(1), v3(2)]));
  const j = Journal.open(dir, { writable: true });
  assert.deepEqual(j.ids().sort(), [id(1), id(2)]);
  await j.append(id(3), [Buffer.from('Subject: 3\r\n\r\nnew\r\n')]);
  j.close();
  const again = Journal.open(dir, { writable: false });
  assert.deepEqual(again.ids().sort(), [id(1), id(2), id(3)]);
  assert.deepEqual(again.read(id(2)), Buffer.from('Subject: 2\r\n\r\nold 2\r\n'));
  assert.ok(readFileSync(join(dir, '0000000002.seg')).includes(`POSTERN-RECORD-V4 ${id(3)} `));
  again.close();
});
