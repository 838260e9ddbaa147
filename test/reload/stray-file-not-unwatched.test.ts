// A file that is not a script made in a scripts folder: vim's swap file `.rcptto.js.swp` when an administrator opens
// a script (and removes at quit), a note, a backup. It changes the folder's own times, which the once-a-second poll
// compared: the poll found a change no event reported (the watcher rightly ignores that file), and a poll later
// reported at error that the file system reports no changes ("not watched", overlayfs, NFS?), for the rest of the
// server's life, shown by `postern status`. Under `postern serve`: the stray file comes and goes, an edit of the
// script after it comes into force, and nothing says changes go unreported.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startCluster, greeted, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';
import { POLL_MS } from '../../engine/reload/change-watcher.ts';

const verdict = (text: string): string => `export default function () { return reject('${text}'); }\n`;

async function answer(c: ClusterProcess): Promise<string> {
  const client = await greeted(c);
  try {
    assert.equal((await client.command('MAIL FROM:<a@example.test>', 30_000)).code, 250);
    return (await client.command('RCPT TO:<b@example.test>', 30_000)).text.replace(/^550 5\.7\.1 /, '');
  } finally {
    client.destroy();
  }
}

test('a stray file made and removed in a scripts folder is not reported as changes the file system does not report', { timeout: 120_000 }, async () => {
  // One worker: the folder is polled by the supervisor alone (a second worker only reloaded as the first did).
  const c = await startCluster({ config: ONE_WORKER, scripts: { 'rcptto.js': verdict('v1') } });
  try {
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    assert.equal(await answer(c), 'v1');
    const swap = join(c.dir, 'scripts', '.rcptto.js.swp');
    await writeFile(swap, 'b0VIM 9.0');
    await sleep(3 * POLL_MS); // polls that find the folder's times changed, and judge them a poll later
    await rm(swap);
    await sleep(3 * POLL_MS);
    await writeFile(join(c.dir, 'scripts', 'rcptto.js'), verdict('v2'));
    await c.waitFor('the edit in force', async () => (await answer(c)) === 'v2');
    const said = c.logs.filter((l) => /not watched|reported no change/.test(String(l.msg))).map((l) => String(l.msg));
    assert.deepEqual(said, [], 'no report that changes go unreported');
    assert.equal((await c.cluster()).reload.watching ?? null, null, 'cluster.json says nothing of unwatched files either');
  } finally {
    await c.stop();
  }
});
