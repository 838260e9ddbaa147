// The fence list the supervisor keeps across restarts (<dataDir>/fences/fenced.json), found unreadable at start:
// cut short, or of another shape (a newer release's, a hand edit). Taken for "no fences yet", a list cut short
// was dropped without a word (and overwritten by the next save); a JSON object instead of a list made every
// worker throw at start ("list is not iterable"), so the server did not start, and nothing named the file.
// Crash records the same: one that did not read was taken for "being written" and skipped at every look, for ever.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { startCluster, greeted, workerPid, ONE_WORKER } from '../helpers/cluster.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-fence-list-');

for (const [what, content] of [
  ['of another shape (an object, as a newer release might write)', '{"version":2,"fences":[{"hook":"rcptto","file":"/etc/postern/scripts/rcptto.js","sha256":"ab","since":"2026-12-06T00:00:00.000Z","crashes":3}]}\n'],
  ['cut short', '[{"hook":"rcptto","file":"/etc/postern/scripts/rcpt'],
] as const) {
  test(`a fence list ${what} is reported naming the file and kept aside; the server starts without it`, async () => {
    const dataDir = join(mkdtempSync(join(scratch.path, 'postern-fence-list-')), 'data');
    const list = join(dataDir, 'fences', 'fenced.json');
    mkdirSync(join(dataDir, 'fences'), { recursive: true });
    writeFileSync(list, content);
    const outcome = await startCluster({ config: ONE_WORKER, dataDir }).catch((err: unknown) => err as Error);
    if (outcome instanceof Error) assert.fail(`the server did not start: ${outcome.message.slice(0, 600)}`);
    const c = outcome;
    try {
      const line = await c.waitFor('the unreadable list logged', () => c.logs.find((l) => /^the fence list is unreadable/.test(String(l.msg))));
      assert.equal(line.level, 50);
      assert.match(String(line.msg), new RegExp(`^the fence list is unreadable: ${list}: not (JSON|a list of fences).*; starting without its fences \\(the file is kept as ${list}\\.unreadable\\)$`));
      assert.equal(readFileSync(`${list}.unreadable`, 'utf8'), content, 'kept as it was, for the administrator');
      assert.equal(existsSync(list), false);
      assert.deepEqual((await c.cluster()).fences, []);
      const client = await greeted(c);
      client.destroy();
    } finally {
      await c.stop();
    }
  });
}

test('a crash record that cannot be read (cut short by a kill during an older release\'s write, or of another shape) is reported naming the file and kept aside, not skipped at every look', async () => {
  const dataDir = join(mkdtempSync(join(scratch.path, 'postern-fence-list-')), 'data');
  const fences = join(dataDir, 'fences');
  mkdirSync(fences, { recursive: true });
  const torn = join(fences, 'crash-4194301-1765000000000.json');
  const other = join(fences, 'crash-4194302-1765000000000.json');
  writeFileSync(torn, '{"at":"2026-12-06T00:00:00.000Z","pid":4194301,"worker":0,"reason":"hang","scr');
  writeFileSync(other, '{"version":2,"blame":[]}');
  const c = await startCluster({ config: ONE_WORKER, dataDir });
  try {
    // Crash records are read when a child dies.
    process.kill(await workerPid(c, 0), 'SIGKILL');
    for (const [file, why] of [[torn, 'not JSON'], [other, 'not a crash record']] as const) {
      const line = await c.waitFor(`${file} reported`, () => c.logs.find((l) => String(l.msg).startsWith(`a crash record is unreadable: ${file}: ${why}`)));
      assert.equal(line.level, 50);
      assert.match(String(line.msg), new RegExp(`; not counted \\(kept as ${file}\\.unreadable\\)$`));
      assert.equal(existsSync(file), false);
      assert.ok(existsSync(`${file}.unreadable`));
    }
    await workerPid(c, 0);
    assert.deepEqual((await c.cluster()).fences, []);
  } finally {
    await c.stop();
  }
});
