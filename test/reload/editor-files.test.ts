// Editors leave files beside a script while it is edited: emacs its lock `.#mailfrom.ts` (a dangling symbolic link
// naming user, host and pid) and `#mailfrom.ts#`, vim `.mailfrom.ts.swp` and `mailfrom.ts~`. None is a script: none
// may make a reload (a new generation, new isolates, sessions moved at their next transaction) nor block one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { MX_WITH_TABLE_CONFIG, mailFromReply, verdictScript } from './helpers.ts';

test('editor lock, autosave, swap and backup files beside a script make no reload; the saved edit makes one', async () => {
  const s = await startTestServer({ config: MX_WITH_TABLE_CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v1') } });
  const folder = join(s.dir, 'scripts');
  try {
    await s.reloader.whenIdle();
    const before = s.reloader.state();
    // emacs starts editing: its lock, then an autosave; vim's swap file and a backup.
    await symlink('root@mail.example.12345:1733500000', join(folder, '.#mailfrom.ts'));
    await writeFile(join(folder, '#mailfrom.ts#'), verdictScript('autosaved, not saved'));
    await writeFile(join(folder, '.mailfrom.ts.swp'), 'swap');
    await writeFile(join(folder, 'mailfrom.ts~'), verdictScript('v0'));
    await s.reloader.whenIdle();
    assert.equal(s.reloader.state().generation, before.generation, 'no new generation for editor files');
    assert.equal(s.reloader.status.data.reloads, before.reloads);

    // The save, and emacs removing its lock and autosave.
    await writeFile(join(folder, 'mailfrom.ts'), verdictScript('v2'));
    await rm(join(folder, '.#mailfrom.ts'));
    await rm(join(folder, '#mailfrom.ts#'));
    await s.reloader.whenIdle();
    assert.equal(await mailFromReply(s), '550 5.7.1 v2');
    assert.equal(s.reloader.status.data.reloads, before.reloads + 1, 'one reload: the save');
    assert.equal(s.reloader.status.data.watching, null, 'events came for each change');
  } finally { await s.stop(); }
});
