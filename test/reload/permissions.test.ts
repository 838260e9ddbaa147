// Permissions changed under a running `postern serve` (two workers, run without the capabilities that let root read
// anything, as a service user): a script or a table made unreadable, or the scripts folder made unsearchable, with no
// SIGHUP. Each is a refused reload naming the file, the running generation stays; the permissions put back reload.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, TWO_WORKERS, ROUND_ROBIN } from '../helpers/cluster.ts';
import { answersOfBothWorkers } from './helpers.ts';

const PROCESSES = ['worker 0', 'worker 1', 'queue 0'];
const script = (tag: string): string => `export default function (ctx) { return reject('${tag} ' + (lookup('blocked', ctx.address.address) ?? 'none')); }\n`;


test('a script or table made unreadable, the scripts folder unsearchable: refused naming it, the running generation stays', { skip: process.getuid?.() !== 0 && 'needs root (setpriv drops the capabilities that read past file modes)' }, async () => {
  const c = await startCluster({
    config: TWO_WORKERS + ROUND_ROBIN + 'tables:\n  blocked: ./blocked\n', scripts: { 'rcptto.js': script('v1') }, files: { blocked: 'b@example.test one\n' },
    wrap: ['setpriv', '--bounding-set=-dac_override,-dac_read_search'],
  });
  const file = join(c.dir, 'scripts', 'rcptto.js');
  const table = join(c.dir, 'blocked');
  const folder = join(c.dir, 'scripts');
  const refusedNaming = (what: string, pattern: RegExp) => c.waitFor(what, async () => {
    const r = (await c.cluster()).reload;
    return PROCESSES.every((p) => r.processes[p]?.refused) && pattern.test((r.lastError ?? []).join('\n')) && r;
  }, 30_000);
  const ok = (what: string, expected: string) => c.waitFor(what, async () => {
    const r = (await c.cluster()).reload;
    if (r.lastError || !PROCESSES.every((p) => r.processes[p] && !r.processes[p]!.refused)) return false;
    const a = await answersOfBothWorkers(c);
    return a.size === 1 && a.has(expected);
  }, 30_000);
  try {
    await c.waitFor('every process ready', async () => { const r = (await c.cluster()).reload; return PROCESSES.every((p) => r.processes[p]) && r.converged; });
    assert.deepEqual(await answersOfBothWorkers(c), new Set(['v1 one']));
    await writeFile(file, script('v2'));
    await ok('v2 in force', 'v2 one');

    await chmod(file, 0);
    await refusedNaming('the unreadable script refused', new RegExp(`${file}:1:1: cannot read: EACCES`));
    assert.deepEqual(await answersOfBothWorkers(c), new Set(['v2 one']));
    await chmod(file, 0o644);
    await ok('the script readable again', 'v2 one');

    await chmod(table, 0);
    await refusedNaming('the unreadable table refused', new RegExp(`${table}.*EACCES`));
    assert.deepEqual(await answersOfBothWorkers(c), new Set(['v2 one']));
    await chmod(table, 0o644);
    await writeFile(table, 'b@example.test two\n');
    await ok('the table readable again', 'v2 two');

    await chmod(folder, 0o600);
    await refusedNaming('the unsearchable folder refused', new RegExp(`${folder}`));
    assert.deepEqual(await answersOfBothWorkers(c), new Set(['v2 two']));
    await chmod(folder, 0o755);
    await ok('the folder searchable again', 'v2 two');
  } finally {
    await chmod(folder, 0o755).catch(() => undefined);
    await c.stop();
  }
});
