// The running-call mirror's files (fences/running-<pid>.bin, .json) are opened by name: a symbolic link another
// local user planted at that name (in a data directory others may write, where fences/ may even be theirs) was
// opened with truncation and written through — a journal segment of acknowledged mail, say, emptied by the next
// worker to start with that pid. The names are this process's own: whatever is there is replaced, never followed.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runningCall, readMirror } from '../../engine/sandbox/index.ts';

const dir = await mkdtemp(join(tmpdir(), 'postern-mirror-links-'));
after(() => rm(dir, { recursive: true, force: true }));

test('links planted at the mirror\'s names are replaced, not written through; the mirror is still read back', async () => {
  const mirror = join(dir, `running-${process.pid}`);
  const victims = { bin: join(dir, 'segment'), json: join(dir, 'other') };
  await writeFile(victims.bin, 'acknowledged mail\n');
  await writeFile(victims.json, 'precious\n');
  await symlink(victims.bin, `${mirror}.bin`);
  await symlink(victims.json, `${mirror}.json.tmp`);
  runningCall.mirrorTo(mirror);
  assert.equal(await readFile(victims.bin, 'utf8'), 'acknowledged mail\n', 'not truncated through the link');
  assert.equal(await readFile(victims.json, 'utf8'), 'precious\n');
  for (const file of [`${mirror}.bin`, `${mirror}.json`]) {
    const st = await lstat(file);
    assert.ok(st.isFile(), `${file} is a file of its own`);
    assert.equal((st.mode & 0o777).toString(8), '600');
  }
  assert.deepEqual(readMirror(mirror), [], 'nothing running');
});
