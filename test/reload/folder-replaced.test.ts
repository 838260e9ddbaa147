/**
 * A scripts folder that is itself replaced, not only the files in it: deleted and created again (a deploy
 * that does `rm -rf scripts && cp -r new/ scripts`), also where it is not beside postern.yaml, or a
 * `scripts` symlink pointed at another folder with an atomic rename (`ln -sfn`). Each time the new folder's
 * content takes effect, and so do later edits in it: the watch follows the new folder (it stayed on the
 * deleted one, and later saves were never applied while status said all was well).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, rename, rm, mkdir, symlink, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { mailFromReply, verdictScript } from './helpers.ts';

const CONFIG = `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`;
/** Until the verdict is `text` (a reload is asynchronous; the hang guard is until()'s). */
async function verdictBecomes(s: TestServer, text: string): Promise<void> {
  await until(`the verdict "${text}"`, async () => await mailFromReply(s) === `550 5.7.1 ${text}`, { timeoutMs: 30_000 });
  assert.equal(s.reloader.status.data.lastError, null);
}

/** Point the configuration's `scripts:` at `folder`. */
async function useScripts(s: TestServer, folder: string): Promise<void> {
  const cfg = join(s.dir, 'postern.yaml');
  await writeFile(cfg, (await readFile(cfg, 'utf8')).replace(/^scripts: .*$/m, `scripts: ${JSON.stringify(folder)}`));
}

test('a scripts folder deleted and created again: its scripts and every later edit in it take effect', async () => {
  const s = await startTestServer({ config: CONFIG, scripts: { 'mailfrom.ts': verdictScript('v0') } });
  try {
    // Beside postern.yaml (the configuration's folder is watched anyway), then in a folder of its own.
    const away = join(s.dir, 'deploy', 'current', 'scripts');
    for (const folder of [join(s.dir, 'scripts'), away]) {
      if (folder === away) {
        await mkdir(away, { recursive: true });
        await writeFile(join(away, 'mailfrom.ts'), verdictScript('away'));
        await useScripts(s, away);
        await verdictBecomes(s, 'away');
      }
      await rm(folder, { recursive: true });
      await mkdir(folder);
      await writeFile(join(folder, 'mailfrom.ts'), verdictScript(`${folder} recreated`));
      await verdictBecomes(s, `${folder} recreated`);
      for (const n of [1, 2]) {
        await writeFile(join(folder, 'mailfrom.ts'), verdictScript(`${folder} edit ${n}`));
        await verdictBecomes(s, `${folder} edit ${n}`);
      }
    }
  } finally { await s.stop(); }
});

test('a scripts symlink pointed at another folder (ln -sfn: rename over the link): the new folder is watched', async () => {
  const s = await startTestServer({ config: CONFIG });
  try {
    const releases = join(s.dir, 'releases');
    for (const r of ['r1', 'r2']) {
      await mkdir(join(releases, r), { recursive: true });
      await writeFile(join(releases, r, 'mailfrom.ts'), verdictScript(r));
    }
    const link = join(s.dir, 'live-scripts');
    await symlink(join(releases, 'r1'), link);
    await useScripts(s, link);
    await verdictBecomes(s, 'r1');
    await symlink(join(releases, 'r2'), `${link}.new`);
    await rename(`${link}.new`, link);
    await verdictBecomes(s, 'r2');
    await writeFile(join(releases, 'r2', 'mailfrom.ts'), verdictScript('r2 edited'));
    await verdictBecomes(s, 'r2 edited');
  } finally { await s.stop(); }
});
