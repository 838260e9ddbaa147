// Shadow counts under `postern serve`: each worker process counts its own shadow calls; `postern status`
// (the supervisor) sums them from the workers' metrics. A real supervisor with two workers.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
let c: ClusterProcess | undefined;
let shadow: string | undefined;
after(async () => {
  await c?.stop();
  if (shadow) await rm(shadow, { recursive: true, force: true });
});

function status(config: string): Record<string, unknown> | null {
  const r = spawnSync(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', config], { encoding: 'utf8', timeout: 60_000 });
  try { return JSON.parse(r.stdout) as Record<string, unknown>; } catch { return null; }
}

test('postern status sums the shadow counts of every worker', async () => {
  shadow = await mkdtemp(join(tmpdir(), 'postern-shadow-cluster-'));
  await writeFile(join(shadow, 'rcptto.js'), `export default (ctx) => (ctx.address.localPart === 'keep' ? undefined : reject('candidate'));`);
  c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
localDomains: [example.test]
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", limits: { greetingDelayMs: 0 }, shadowScripts: ${JSON.stringify(shadow)} }
`,
    scripts: { 'rcptto.js': 'export default () => {};' },
  });
  for (let i = 0; i < 4; i++) await submitMessage(c.port('in'), 'a@example.net', ['b@example.test', 'keep@example.test']);
  const config = join(c.dir, 'postern.yaml');
  const counts = await c.waitFor('the shadow counts in status', () => {
    const s = status(config)?.shadow as Record<string, { same: number; different: number }> | undefined;
    return s?.in && s.in.different + s.in.same === 8 ? s.in : null;
  });
  assert.deepEqual(counts, { same: 4, different: 4, error: 0, skipped: 0 });
});
