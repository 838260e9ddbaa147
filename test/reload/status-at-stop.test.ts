/**
 * status.json at a stop: a graceful stop must not leave its temporary file behind. The queue process of
 * `postern serve` checks its inputs when it is ready (the supervisor tells it to); that check's status write was
 * not waited for, and the exit cut it (test/cluster/stop.test.ts met `.status.json.<pid>.<hex>.tmp` after a
 * SIGTERM on a loaded machine). A check told after the stop began started a write nothing waited for at all.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, PLAIN_MX_CONFIG } from '../helpers/postern.ts';

test('close() waits for the status writes of the checks before it: the file holds the last count and no temporary file is left', async () => {
  const s = await startTestServer({ config: PLAIN_MX_CONFIG });
  const dataDir = join(s.dir, 'data');
  try {
    // Checks of unchanged inputs (what the supervisor's "reload: change" at ready is): each starts a status write.
    for (let i = 0; i < 20; i++) assert.equal((await s.reloader.reload('change')).changed, false);
    await s.close();
    assert.deepEqual((await readdir(dataDir)).filter((n) => n.endsWith('.tmp')), [], 'no write in flight after close()');
    const written = JSON.parse(await readFile(join(dataDir, 'status.json'), 'utf8')) as { checks: number };
    assert.equal(written.checks, s.reloader.status.data.checks, 'status.json holds the last check');
  } finally {
    await s.stop().catch(() => undefined);
  }
});

test('a reload told once the stop began does nothing: no check, no status write after close()', async () => {
  const s = await startTestServer({ config: PLAIN_MX_CONFIG });
  const dataDir = join(s.dir, 'data');
  try {
    await s.close();
    const before = await readFile(join(dataDir, 'status.json'), 'utf8');
    const outcome = await s.reloader.reload('change');
    assert.deepEqual(outcome.errors, ['the server is stopping']);
    assert.equal(await readFile(join(dataDir, 'status.json'), 'utf8'), before, 'nothing written after the stop');
    assert.equal(s.reloader.status.data.checks, JSON.parse(before).checks);
  } finally {
    await s.stop().catch(() => undefined);
  }
});
