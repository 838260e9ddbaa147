// A scripts folder on a file system that reports no changes: an overlayfs mount whose lower layer is edited (as
// where a host updates an image layer, and like FUSE, NFS or a VM's shared folder): a watch is set and no event
// ever comes. Under `postern serve` with two workers the edit must still come into force, and the administrator be
// told that changes are found by polling.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, TWO_WORKERS, ROUND_ROBIN, type ClusterProcess } from '../helpers/cluster.ts';
import { answersOfBothWorkers } from './helpers.ts';

const verdict = (text: string): string => `export default function () { return reject('${text}'); }\n`;


test('scripts on overlayfs edited in its lower layer (no inotify events): the edit comes into force and polling is reported', { skip: process.getuid?.() !== 0 && 'needs root, to mount an overlayfs' }, async () => {
  const base = await mkdtemp(join(tmpdir(), 'postern-overlay-'));
  const [lower, upper, work, merged] = ['lower', 'upper', 'work', 'merged'].map((d) => join(base, d)) as [string, string, string, string];
  for (const d of [lower, upper, work, merged]) await mkdir(d);
  await writeFile(join(lower, 'rcptto.js'), verdict('v1'));
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${upper},workdir=${work}`, merged]);
  let c: ClusterProcess | null = null;
  try {
    c = await startCluster({ config: `${ROUND_ROBIN}${TWO_WORKERS}    scripts: ${JSON.stringify(merged)}\n` });
    const cluster = c;
    await cluster.waitFor('every process ready', async () => (await cluster.cluster()).processes.every((p) => p.ready));
    assert.deepEqual(await answersOfBothWorkers(cluster), new Set(['v1']));

    await writeFile(join(lower, 'rcptto.js'), verdict('v2'));
    await cluster.waitFor('both workers on v2', async () => { const a = await answersOfBothWorkers(cluster); return a.size === 1 && a.has('v2'); }, 30_000);
    const said = await cluster.waitFor('an error line saying changes are found by polling', () =>
      cluster.logs.find((l) => l.level === 50 && /not watched/.test(String(l.msg))), 30_000);
    assert.match(String(said.msg), new RegExp(`reported no change of ${join(merged, 'rcptto.js')}`));
    await cluster.waitFor('cluster.json to say so', async () => /reported no change/.test((await cluster.cluster()).reload.watching ?? ''));
  } finally {
    await c?.stop();
    execFileSync('umount', [merged]);
    await rm(base, { recursive: true, force: true });
  }
});
