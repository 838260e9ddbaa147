// SpoolReserve.keep() called again while the reserve is being written resolves only once it is written: the
// queue runner calls it at start and at its first scan, and its close() awaits the latest call. That call
// resolved at once, close() returned mid-write, and removing the data folder then failed (ENOTEMPTY: the
// reserve's .new file written into it), a flake of any test that stops a server right after its start.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SpoolReserve } from '../../engine/spool/reserve.ts';

test('a second keep() while the first writes resolves after the reserve is in place, nothing half-written left', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-reserve-'));
  try {
    const reserve = new SpoolReserve(join(dir, 'reserve'));
    const first = reserve.keep(Number.MAX_SAFE_INTEGER, 0);
    const second = reserve.keep(Number.MAX_SAFE_INTEGER, 0);
    assert.equal(await second, false, 'the second call made nothing itself');
    assert.equal(reserve.state, 'kept', 'the reserve is written when the second call resolves');
    assert.equal(existsSync(join(dir, 'reserve.new')), false);
    assert.equal(await first, true);
    assert.equal(await reserve.keep(Number.MAX_SAFE_INTEGER, 0), false, 'kept: nothing more to make');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
