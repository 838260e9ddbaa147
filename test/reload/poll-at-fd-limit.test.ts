// The inputs' status poll (every second, beside the file watch) at the process's open-file limit: reading a scripts
// folder failed with EMFILE, which the poll took for a change of the folder; no event came for it (nothing had
// changed), so the next poll concluded that the file system reports no changes: logged at error as "overlayfs,
// FUSE, NFS, a shared folder?", file watching given up for polling for the rest of the process's life, and
// `postern status` saying so. A read that failed for want of descriptors says nothing about the file: that poll
// is skipped, and the next one compares with what was last read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, PLAIN_MX_CONFIG } from '../helpers/postern.ts';
import { exhaustDescriptors } from '../helpers/process-resources.ts';
import { until } from '../helpers/wait.ts';

test('polls at the open-file limit neither count as a change nor blame the file system', { timeout: 60_000 }, async () => {
  const s = await startTestServer({ config: PLAIN_MX_CONFIG, scripts: { 'rcptto.ts': 'export default () => accept();' } });
  try {
    const polls = (): number => s.reloader.watchEvents.polls;
    await until('two polls (a baseline)', () => polls() >= 2);
    const reloads: unknown[] = [];
    s.reloader.onReload((o) => reloads.push(o));
    const from = polls();
    const full = exhaustDescriptors();
    try {
      // Kept at the limit (what the process closes meanwhile filled again) for three polls.
      await until('three polls at the open-file limit', () => { full.topUp(); return polls() >= from + 3; });
    } finally {
      full.release();
    }
    const after = polls();
    await until('two polls after', () => polls() >= after + 2);
    const blamed = s.logs.filter((l) => /file changes are not watched/.test(String(l.msg)));
    assert.deepEqual(blamed.map((l) => l.msg), [], 'no file system blamed for the process\'s own lack of descriptors');
    assert.equal(s.reloader.status.data.watching, null, 'status: still watched');
    assert.equal(reloads.length, 0, 'nothing changed: no reload');
    // Events still come and are acted on.
    await writeFile(join(s.dir, 'scripts', 'mailfrom.ts'), 'export default () => {};');
    await until('the edit reloaded', () => reloads.length > 0);
  } finally {
    await s.stop();
  }
});
