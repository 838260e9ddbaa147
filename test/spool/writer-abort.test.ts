// A dropped message (refused, or its client gone) has nothing left to read: read() after abort() handed out an
// unfilled buffer of the old length (Buffer.allocUnsafe: whatever memory held before), for a message in memory and
// for one with a file of its own alike.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';

test('a writer aborted reads back nothing, in memory or from its own file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-writer-abort-'));
  const spool = new Spool(join(dir, 'spool'));
  await spool.init();
  try {
    for (const maxHeldBytes of [Infinity, 16]) {
      const writer = spool.create(spool.newId(), maxHeldBytes);
      for (let i = 0; i < 8; i++) writer.write(Buffer.from(`Subject: part ${i}\r\n`));
      assert.ok(writer.read(0, 1000).length > 0);
      writer.abort();
      assert.equal(writer.read(0, 1000).length, 0, `maxHeldBytes ${maxHeldBytes}`);
      assert.equal(writer.bytes, 0);
    }
  } finally {
    spool.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
