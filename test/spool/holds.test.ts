// Hold files (`postern queue hold`) beside spooled messages: durable, listed by scan(), and never left behind
// by a message that is gone — removed at the next scan and at start.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { spoolMessage } from './helpers/spool-message.ts';

const by = { user: 'alice', uid: 1000, sudoUser: null, pid: 1, host: 'h' };

test('a hold is listed with its message, read back, released; one without its message goes at the next scan and at start', async () => {
  const spool = new Spool(join(mkdtempSync(join(tmpdir(), 'postern-holds-')), 'spool'));
  await spool.init();
  const kept = await spoolMessage(spool, [Buffer.from('Subject: a\r\n\r\nx\r\n')]);
  const other = await spoolMessage(spool, [Buffer.from('Subject: b\r\n\r\ny\r\n')]);
  await spool.hold(kept, { at: '2026-01-01T00:00:00.000Z', by });
  assert.deepEqual((await spool.scan()).map((e) => [e.id, e.held]), [[kept, true], [other, false]]);
  assert.deepEqual(await spool.readHold(kept), { at: '2026-01-01T00:00:00.000Z', by });
  assert.equal(await spool.isHeld(other), false);

  // The message finished while it was being held: its hold goes at the next scan.
  await spool.hold(other, { at: null, by: null });
  await spool.remove(other);
  await spool.scan();
  assert.ok(!existsSync(spool.heldPath(other)));
  assert.ok(existsSync(spool.heldPath(kept)), 'a hold whose message is there stays');

  // And at start (a crash between a delete and the removal of its hold).
  const orphan = spool.newId();
  await spool.hold(orphan, { at: null, by: null });
  spool.close();
  const again = new Spool(spool.root);
  await again.init();
  assert.ok(!existsSync(again.heldPath(orphan)));
  assert.equal(await again.isHeld(kept), true, 'held across a restart');
  assert.equal(await again.release(kept), true);
  assert.equal(await again.release(kept), false, 'released once');
  assert.deepEqual((await again.scan()).map((e) => e.held), [false]);
  again.close();
});

test('a data script\'s hold, written just before its message is committed, survives a scan that runs in between', async () => {
  const spool = new Spool(join(mkdtempSync(join(tmpdir(), 'postern-holds-')), 'spool'));
  await spool.init();
  const id = spool.newId();
  await spool.hold(id, { at: new Date().toISOString(), by: null, script: { file: 'data.ts', reason: 'review' } });
  await spool.scan(); // the commit has not happened yet
  assert.ok(existsSync(spool.heldPath(id)), 'kept: its message is being committed');
  await spool.hold(spool.newId(), { at: null, by: null }); // an operator's hold without its message goes
  assert.equal((await spool.heldIds()).length, 2);
  await spool.scan();
  assert.deepEqual(await spool.heldIds(), [id]);
  spool.close();
});
