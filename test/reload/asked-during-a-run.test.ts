/**
 * A reload asked while another is being built gets the outcome of a run that read the inputs after the
 * request, not of the run under way (which read them before the caller's edit): the "ok" an administrator or
 * a test gets after an edit is about that edit.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { MX_WITH_TABLE_CONFIG, mailFromReply, verdictScript } from './helpers.ts';

test('a reload asked during a build, after an edit, resolves once the edit is in force; a broken edit is its own refusal', async () => {
  const s = await startTestServer({ config: MX_WITH_TABLE_CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v0') } });
  const file = join(s.dir, 'scripts', 'mailfrom.ts');
  let release!: () => void;
  let entered!: () => void;
  const inBuild = new Promise<void>((r) => { entered = r; });
  s.reloader.tuning.afterBuild = async () => {
    s.reloader.tuning.afterBuild = undefined; // only the first build waits
    entered();
    await new Promise<void>((r) => { release = r; });
  };
  try {
    await writeFile(file, verdictScript('v1'));
    const first = s.reloader.reload('SIGHUP');
    await inBuild; // the first run has read v1 and waits
    await writeFile(file, verdictScript('v2'));
    const second = s.reloader.reload('SIGHUP');
    release();
    await first; // superseded by v2 (or, when the file watcher's run was the one held, ended before it)
    const outcome = await second;
    assert.equal(outcome.ok, true, outcome.errors.join('\n'));
    assert.equal(await mailFromReply(s), '550 5.7.1 v2', 'the second caller was told of a content that is not in force');

    // The same with a broken edit: the caller asked after it hears of the refusal, not of the run before.
    s.reloader.tuning.afterBuild = async () => {
      s.reloader.tuning.afterBuild = undefined;
      entered();
      await new Promise<void>((r) => { release = r; });
    };
    const inBuild2 = new Promise<void>((r) => { entered = r; });
    await writeFile(file, verdictScript('v3'));
    const third = s.reloader.reload('SIGHUP');
    await inBuild2;
    await writeFile(file, 'export default (ctx) => {\n');
    const fourth = s.reloader.reload('SIGHUP');
    release();
    // The run that read v3 saw the broken edit land during its build (or the third call coalesced into the
    // run after it, with the file watcher's run held): v3 was never in force either way.
    const t = await third;
    assert.ok(t.superseded === true || !t.ok, 'v3 reported as in force');
    const refused = await fourth;
    assert.equal(refused.ok, false, 'a broken edit reported as reloaded');
    assert.match(refused.errors.join('\n'), /mailfrom\.ts/);
    assert.equal(await mailFromReply(s), '550 5.7.1 v2', 'v3 was never whole in force; the broken edit is refused');
  } finally {
    s.reloader.tuning.afterBuild = undefined;
    release?.();
    await s.stop();
  }
});
