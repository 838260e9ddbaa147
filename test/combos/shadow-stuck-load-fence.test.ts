/**
 * A shadow script whose top level cannot be stopped (it blocks inside a builtin V8 does not interrupt), saved while
 * the server runs: the reload is refused and the running generation serves on, but a worker replaced later (killed
 * here) starts with the file on disk, parks a thread loading it, and dies. Its crash record named the script
 * without its shadow flag, so the fence that followed was the live copy's, keyed apart from the shadow run since
 * fences tell the two apart (fenceKey): the shadow script's top level still ran at every start, and the worker
 * crash-looped for good. Named as a shadow script, it is fenced at its first crash and the replacement starts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';

const BLOCKING_TOP_LEVEL = "const n = Array(2 ** 32 - 1).lastIndexOf(1);\nexport default function () { return reject('never ' + n); }\n";

const workers = async (c: ClusterProcess) => (await c.cluster()).processes.filter((p) => p.role === 'worker');

test('a shadow script whose top level parks its thread at a worker start is fenced as a shadow script, and the worker starts', { timeout: 240_000 }, async () => {
  const shadow = await mkdtemp(join(tmpdir(), 'postern-shadow-stuck-'));
  await writeFile(join(shadow, 'rcptto.js'), 'export default () => {};\n');
  const c = await startCluster({
    // One worker: the claim is about a worker's replacement, not about several.
    config: ONE_WORKER.replace('limits: { greetingDelayMs: 0 }', `limits: { greetingDelayMs: 0 }\n    shadowScripts: ${shadow}`),
    scripts: { 'rcptto.js': 'export default () => accept();' },
    scriptLimits: 'product', // the top level hangs in a builtin: its time limit is what gives up on it
  });
  try {
    await c.waitFor('the worker ready', async () => (await workers(c)).filter((p) => p.ready).length === 1);
    const reloads = c.logs.length;
    await writeFile(join(shadow, 'rcptto.js'), BLOCKING_TOP_LEVEL);
    await c.waitFor('the reload refused', () => c.logs.slice(reloads).some((l) => /could not be stopped/.test(JSON.stringify(l))), 120_000);
    const victim = (await workers(c))[0]!;
    process.kill(Number(victim.pid), 'SIGKILL');
    const status = await c.waitFor('the shadow script fenced', async () => {
      const s = await c.cluster();
      return s.fences.some((f) => (f as { shadow?: boolean }).shadow === true) && s;
    }, 120_000);
    assert.deepEqual(status.fences.map((f) => [f.file, (f as { shadow?: boolean }).shadow === true]), [[join(shadow, 'rcptto.js'), true]]);
    await c.waitFor('the worker ready again', async () => (await workers(c)).filter((p) => p.ready).length === 1, 120_000);
  } finally {
    await c.stop();
    await rm(shadow, { recursive: true, force: true });
  }
});
