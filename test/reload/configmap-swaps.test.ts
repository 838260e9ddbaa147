// A Kubernetes ConfigMap mount under `postern serve` with two workers: the configuration, the scripts folder and a
// table all behind the mount's `..data` symlink, swapped atomically several times in a row, each old target deleted
// right after its swap (as kubelet does). Every worker ends on the last version, and a broken version is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { watchServer, greeted, freePort, type ClusterProcess } from '../helpers/cluster.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const PROCESSES = ['worker 0', 'worker 1', 'queue 0'];

/** The RCPT answers of two connections open at once (round robin: one on each worker). */
async function answers(c: ClusterProcess, rcpt: string): Promise<Set<string>> {
  const clients = [await greeted(c), await greeted(c)];
  const texts = await Promise.all(clients.map(async (client) => {
    assert.equal((await client.command('MAIL FROM:<a@example.test>', 30_000)).code, 250);
    return (await client.command(`RCPT TO:<${rcpt}>`, 30_000)).text.replace(/^5\d\d 5\.\d\.\d /, '');
  }));
  for (const client of clients) client.destroy();
  return new Set(texts);
}

test('configuration, scripts and a table behind a ConfigMap ..data link: several swaps in a row reach both workers', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-configmap-'));
  const cm = join(dir, 'cm');
  await mkdir(cm);
  const port = await freePort();
  const config = (greetingDelayMs: number) => `dataDir: ${JSON.stringify(join(dir, 'data'))}
scripts: ./scripts
workers: 2
workerChoice: roundRobin
localDomains: [example.test]
tables:
  blocked: ./blocked
listeners:
  - name: in
    listen: 127.0.0.1:${port}
    reverseDns: false
    limits: { greetingDelayMs: ${greetingDelayMs} }
`;
  // A version: its own folder, then `..data` renamed over to it, then the previous one removed.
  let previous: string | null = null;
  let n = 0;
  const publish = async (files: { yaml: string; script: string; blocked: string }): Promise<void> => {
    const version = `..2026_12_06_21_00_0${++n}.${1000 + n}`;
    await mkdir(join(cm, version, 'scripts'), { recursive: true });
    await writeFile(join(cm, version, 'postern.yaml'), files.yaml);
    await writeFile(join(cm, version, 'scripts', 'rcptto.js'), files.script);
    await writeFile(join(cm, version, 'blocked'), files.blocked);
    await symlink(version, join(cm, '..data_tmp'));
    await rename(join(cm, '..data_tmp'), join(cm, '..data'));
    if (previous) await rm(join(cm, previous), { recursive: true });
    previous = version;
  };
  const script = (tag: string) => `export default function (ctx) {
  const hit = lookup('blocked', ctx.address.address);
  return reject('${tag} ' + (hit ?? 'none'));
}
`;
  await publish({ yaml: config(0), script: script('v1'), blocked: 'b@example.test one\n' });
  for (const name of ['postern.yaml', 'scripts', 'blocked']) await symlink(join('..data', name), join(cm, name));
  const proc = spawn(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'serve', '--config', join(cm, 'postern.yaml')], {
    cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1' },
  });
  const c = await watchServer(proc, { dir, dataDir: join(dir, 'data'), ports: new Map([['in', port]]) });
  try {
    await c.waitFor('every process ready', async () => { const r = (await c.cluster()).reload; return PROCESSES.every((p) => r.processes[p]) && r.converged; });
    assert.deepEqual(await answers(c, 'b@example.test'), new Set(['v1 one']));

    // Three swaps in a row, no waiting between them: only the last matters.
    await publish({ yaml: config(0), script: script('v2'), blocked: 'b@example.test two\n' });
    await publish({ yaml: config(1), script: script('v3'), blocked: 'b@example.test three\n' });
    await publish({ yaml: config(0), script: script('v4'), blocked: 'b@example.test four\n' });
    await c.waitFor('both workers on v4', async () => { const a = await answers(c, 'b@example.test'); return a.size === 1 && a.has('v4 four') && a; }, 30_000);

    // A broken version is refused by every process, naming the file; v4 stays in force.
    await publish({ yaml: config(0), script: 'export default function ( {\n', blocked: 'b@example.test five\n' });
    const broken = await c.waitFor('the broken version refused', async () => { const r = (await c.cluster()).reload; return PROCESSES.every((p) => r.processes[p]?.refused) && r; }, 30_000);
    assert.match(broken.lastError!.join('\n'), /rcptto\.js:\d+:\d+: SyntaxError/);
    assert.deepEqual(await answers(c, 'b@example.test'), new Set(['v4 four']));

    await publish({ yaml: config(0), script: script('v6'), blocked: 'b@example.test six\n' });
    await c.waitFor('both workers on v6', async () => { const a = await answers(c, 'b@example.test'); return a.size === 1 && a.has('v6 six') && a; }, 30_000);
    const r = await c.waitFor('every process on v6, none refusing', async () => {
      const now = (await c.cluster()).reload;
      return PROCESSES.every((p) => now.processes[p] && !now.processes[p]!.refused) && now.converged && now.lastError === null && now;
    });
    // Every swap was reported by events: the poll that backs them up must not claim otherwise.
    assert.equal(r.watching ?? null, null);
    assert.equal(c.logs.filter((l) => /not watched/.test(String(l.msg))).length, 0);
  } finally { await c.stop(); }
});
