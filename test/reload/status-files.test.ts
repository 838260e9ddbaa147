// What `postern status` tells of the content in force, file by file: where edits are not reported (a bind mount,
// FUSE, a refused edit) the administrator compares `sha256sum` of each file with what every process runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { startCluster, TWO_WORKERS, type ClusterProcess } from '../helpers/cluster.ts';
import { ask } from '../../engine/cli/status.ts';
import { statusSocket } from '../../engine/cluster/process-model.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const PROCESSES = ['worker 0', 'worker 1', 'queue 0'];
const verdict = (text: string): string => `export default function () { return reject('${text}'); }\n`;
const sha256 = async (file: string): Promise<string> => createHash('sha256').update(await readFile(file)).digest('hex');

type Generations = Record<string, { generation: number; files?: Record<string, string>; refused: string | null }>;

async function status(c: ClusterProcess): Promise<{ generations: Generations }> {
  const { stdout } = await promisify(execFile)(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', join(c.dir, 'postern.yaml')], { env: { ...process.env, NODE_NO_WARNINGS: '1' } })
    .catch((err: { stdout: string }) => ({ stdout: err.stdout }));
  return JSON.parse(stdout) as { generations: Generations };
}

/** What `postern status` prints, asked of the status socket in this process: for polling, without a command started each time. */
async function statusAnswer(c: ClusterProcess): Promise<{ generations: Generations }> {
  return ask<{ generations: Generations }>(statusSocket(c.dataDir), '/status');
}

test('postern status gives, for every process, the SHA-256 of each input file in force; a refused edit shows as a differing file', async () => {
  const c = await startCluster({ config: TWO_WORKERS + 'tables:\n  senders: ./senders\n', scripts: { 'rcptto.js': verdict('v1') }, files: { senders: 'a@example.test ok\n' } });
  const script = join(c.dir, 'scripts', 'rcptto.js');
  const table = join(c.dir, 'senders');
  const config = join(c.dir, 'postern.yaml');
  try {
    await c.waitFor('every process ready', async () => { const r = (await c.cluster()).reload; return PROCESSES.every((p) => r.processes[p]) && r.converged; });
    const first = (await status(c)).generations;
    for (const p of PROCESSES) {
      assert.equal(first[p]?.files?.[script], await sha256(script), `${p}: the script`);
      assert.equal(first[p]?.files?.[table], await sha256(table), `${p}: the table`);
      assert.equal(first[p]?.files?.[config], await sha256(config), `${p}: the configuration`);
    }

    await writeFile(script, verdict('v2'));
    const v2 = await sha256(script);
    await c.waitFor('every process on v2', async () => { const g = (await statusAnswer(c)).generations; return PROCESSES.every((p) => g[p]?.files?.[script] === v2); });

    await writeFile(script, 'export default function ( {\n');
    await c.waitFor('the broken edit refused', async () => { const s = (await statusAnswer(c)).generations; return PROCESSES.every((p) => s[p]?.refused); });
    const g = (await status(c)).generations; // as the command prints it
    assert.ok(PROCESSES.every((p) => g[p]?.refused), 'postern status shows every process refused the edit');
    for (const p of PROCESSES) {
      assert.equal(g[p]!.files![script], v2, `${p}: v2 still in force`);
      assert.notEqual(g[p]!.files![script], await sha256(script), `${p}: differs from the file on disk`);
    }
  } finally { await c.stop(); }
});
