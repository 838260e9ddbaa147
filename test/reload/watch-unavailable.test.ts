// File watching unavailable (inotify instances used up on the host: fs.watch fails with EMFILE): under
// `postern serve` with two workers, the administrator is told (an error line, `postern status`, cluster.json),
// and edits are still applied, found by looking at the files' status every second, even an edit that keeps
// the file's size and modification time (`cp -p`, `rsync -t`, `touch -r`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stat, utimes, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { startCluster, TWO_WORKERS, ROUND_ROBIN } from '../helpers/cluster.ts';
import { answersOfBothWorkers } from './helpers.ts';
import { withoutInotify } from '../helpers/no-inotify.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const verdict = (text: string): string => `export default function () { return reject('${text}'); }\n`;


test('without inotify, reload says so (log at error, postern status) and still applies edits, by content', async () => {
  const c = await startCluster({ config: TWO_WORKERS + ROUND_ROBIN, scripts: { 'rcptto.js': verdict('v1') }, env: withoutInotify() });
  const script = join(c.dir, 'scripts', 'rcptto.js');
  try {
    const said = await c.waitFor('an error line saying file changes are not watched', () =>
      c.logs.find((l) => l.level === 50 && /not watched/.test(String(l.msg))), 30_000);
    assert.match(String(said.msg), /EMFILE/, 'the cause');
    assert.match(String(said.msg), /SIGHUP/, 'what still works');
    assert.deepEqual(await answersOfBothWorkers(c), new Set(['v1']));

    const { stdout } = await promisify(execFile)(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', join(c.dir, 'postern.yaml')], { env: { ...process.env, NODE_NO_WARNINGS: '1' } })
      .catch((err: { stdout: string }) => ({ stdout: err.stdout }));
    const status = JSON.parse(stdout) as { summary: string };
    assert.match(status.summary, /file changes polled every 1 s \(inotify: .*EMFILE/);
    assert.match((await c.cluster()).reload.watching ?? '', /EMFILE/, 'cluster.json says so too');

    await writeFile(script, verdict('v2'));
    await c.waitFor('both workers on v2', async () => { const a = await answersOfBothWorkers(c); return a.size === 1 && a.has('v2'); }, 30_000);

    // Same size, and the modification time put back: only the content (and the status change time) differs.
    const before = await stat(script);
    await writeFile(script, verdict('v3'));
    await utimes(script, before.atime, before.mtime);
    await c.waitFor('both workers on v3', async () => { const a = await answersOfBothWorkers(c); return a.size === 1 && a.has('v3'); }, 30_000);
  } finally { await c.stop(); }
});
