/**
 * A scripts folder that is itself replaced, not only the files in it: deleted and created again (a deploy
 * that does `rm -rf scripts && cp -r new/ scripts`), also where it is not beside postern.yaml, or a
 * `scripts` symlink pointed at another folder with an atomic rename (`ln -sfn`). Each time the new folder's
 * content takes effect, and so do later edits in it: the watch follows the new folder (it stayed on the
 * deleted one, and later saves were never applied while status said all was well). The same for the
 * configuration's own folder swapped by a release-style deploy.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, rename, rm, mkdir, symlink, readFile, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
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

test("the configuration's own folder swapped as a whole (ln -sfn releases/2 etc): the new configuration is in force, and later edits in it", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-release-'));
  // Scripts outside the releases: only the configuration tells them apart, so only its folder's swap can be seen.
  const release = async (n: number, scripts: number): Promise<void> => {
    await mkdir(join(dir, 'releases', String(n)), { recursive: true });
    await writeFile(join(dir, 'releases', String(n), 'postern.yaml'),
      `dataDir: ${JSON.stringify(join(dir, 'data'))}\nscripts: ${JSON.stringify(join(dir, `scripts-${scripts}`))}\n${CONFIG}`);
  };
  for (const n of [1, 2, 3]) {
    await mkdir(join(dir, `scripts-${n}`));
    await writeFile(join(dir, `scripts-${n}`, 'mailfrom.ts'), verdictScript(`scripts ${n}`));
  }
  await release(1, 1);
  await symlink(join(dir, 'releases', '1'), join(dir, 'etc'));
  const running = await startPostern({ configPath: join(dir, 'etc', 'postern.yaml'), logger: createLogger('error', new Writable({ write: (_c, _e, cb) => cb() })) });
  const verdict = async (text: string): Promise<void> => {
    await until(`the verdict "${text}"`, async () => await mailFromReply(running.addresses.get('mx')!.port) === `550 5.7.1 ${text}`, { timeoutMs: 30_000 });
    assert.equal(running.reloader.status.data.lastError, null);
  };
  try {
    await verdict('scripts 1');
    // Before: the watch stayed on releases/1, where nothing changes, and the swap is in a folder not watched.
    await release(2, 2);
    await symlink(join(dir, 'releases', '2'), join(dir, 'etc.new'));
    await rename(join(dir, 'etc.new'), join(dir, 'etc'));
    await verdict('scripts 2');
    await release(2, 3);
    await verdict('scripts 3');
  } finally {
    await running.close();
    await rm(dir, { recursive: true, force: true });
  }
});
