// A warning about the setup (here: a file in the scripts folder that is no hook's, so it never runs) is said once,
// not at every reload, nor by every process. Under `postern serve` each process logged it at its start and again at
// every reload (2 workers and the queue process: 3 lines a start, 3 more a reload), and a single process at every
// reload: a site that reloads often (pki changes, renewals, SIGHUP from a deploy) got the same lines all day and
// missed the new one. Now the supervisor says each once for the server, a new or changed one at once, and `postern
// status` lists those in force. (Said again once a day while it holds: test/reload/setup-warnings-memory.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { startCluster } from '../helpers/cluster.ts';
import { startTestServer } from '../helpers/postern.ts';
import { configYaml, testListener } from '../helpers/config.ts';

const neverRuns = (file: string) => (l: Record<string, unknown>): boolean => l.level === 40 && String(l.msg).startsWith(`${file}: not a hook's script, so it never runs`);

test('postern serve: a setup warning is said once at start, not again at each reload; a new one once, when it comes', async () => {
  const c = await startCluster({
    config: `
workers: 2
listeners:
  - { name: mx, listen: "127.0.0.1:{PORT:mx}", reverseDns: false }
`,
    scripts: { 'helper.ts': 'export const x = 1;\n' },
  });
  try {
    const config = join(c.dir, 'postern.yaml');
    const helper = join(c.dir, 'scripts', 'helper.ts');
    const other = join(c.dir, 'scripts', 'other.ts');
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    await c.waitFor('the warning', () => c.logs.some(neverRuns(helper)));
    for (let i = 0; i < 2; i++) assert.equal((await runCli(['reload', '--config', config], { timeoutMs: 150_000 })).code, 0);
    await writeFile(other, 'export const y = 2;\n');
    assert.equal((await runCli(['reload', '--config', config], { timeoutMs: 150_000 })).code, 0);
    // The supervisor says a reload's new warnings in one go, after any it would say again: once this one is there, those are.
    await c.waitFor('the new warning', () => c.logs.some(neverRuns(other)));
    assert.equal(c.logs.filter(neverRuns(helper)).length, 1, JSON.stringify(c.logs.filter(neverRuns(helper)).map((l) => l.pid)));
    assert.equal(c.logs.filter(neverRuns(other)).length, 1);
    const status = await runCli(['status', '--config', config]);
    const warnings = (JSON.parse(status.stdout) as { cluster: { reload: { warnings: Array<{ message: string }> } } }).cluster.reload.warnings;
    assert.deepEqual(warnings.map((w) => w.message.split(':')[0]).sort(), [helper, other]);
  } finally {
    await c.stop();
  }
});

test('a single process: a setup warning is said at start, not again at each reload', async () => {
  const s = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], listeners: [testListener('mx', { tls: { mode: 'none' } })] }),
    scripts: { 'helper.ts': 'export const x = 1;\n' },
  });
  try {
    const helper = join(s.dir, 'scripts', 'helper.ts');
    assert.equal(s.logs.filter(neverRuns(helper)).length, 1);
    for (let i = 0; i < 3; i++) assert.equal((await s.reloader.reload('SIGHUP')).ok, true);
    assert.equal(s.logs.filter(neverRuns(helper)).length, 1);
    await writeFile(join(s.dir, 'scripts', 'other.ts'), 'export const y = 2;\n');
    assert.equal((await s.reloader.reload('SIGHUP')).ok, true);
    assert.equal(s.logs.filter(neverRuns(join(s.dir, 'scripts', 'other.ts'))).length, 1);
    assert.equal(s.logs.filter(neverRuns(helper)).length, 1);
  } finally {
    await s.stop();
  }
});
