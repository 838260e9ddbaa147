// Replay under `postern serve`: each worker process records into its own file of the day, and
// `postern replay` reads them all. A real supervisor with two workers, real SMTP clients.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { recordingFiles } from '../../engine/replay/recording-files.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
let c: ClusterProcess | undefined;
after(() => c?.stop());

test('several worker processes record side by side; replay reads every file', async () => {
  c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
localDomains: [example.test]
replay: { keepDays: 1 }
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", limits: { greetingDelayMs: 0 } }
`,
    scripts: { 'rcptto.js': 'export default () => {};' },
  });
  const messages = 12;
  for (let i = 0; i < messages; i++) await submitMessage(c.port('in'), 'a@example.net', [`r${i}@example.test`]);
  const dataDir = c.dataDir;
  const count = async (): Promise<number> => {
    let n = 0;
    for (const f of recordingFiles(dataDir)) n += (await readFile(f.path, 'utf8')).split('\n').filter(Boolean).length;
    return n;
  };
  await c.waitFor('every call recorded', async () => (await count()) === messages);
  // Whole lines only, whichever process wrote them.
  for (const f of recordingFiles(dataDir)) for (const line of (await readFile(f.path, 'utf8')).split('\n').filter(Boolean)) JSON.parse(line);
  const workers = new Set(recordingFiles(dataDir).map((f) => /\.(\d+)\.jsonl$/.exec(f.path)![1]));
  const pids = (await c.cluster()).processes.filter((p) => p.role === 'worker').map((p) => String(p.pid));
  assert.ok([...workers].every((pid) => pids.includes(pid)), `files of worker pids ${[...workers]} (workers: ${pids})`);

  const candidate = join(c.dir, 'candidate');
  await mkdir(candidate);
  await writeFile(join(candidate, 'rcptto.js'), `export default (ctx) => (Number(ctx.address.localPart.slice(1)) % 3 === 0 ? reject('no') : undefined);`);
  const r = spawnSync(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'replay', '-c', join(c.dir, 'postern.yaml'), '--scripts', candidate, '--json'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 1, r.stderr);
  const summary = JSON.parse(r.stdout) as { decisions: number; changed: number; groups: Array<{ from: string; to: string; count: number }> };
  assert.deepEqual([summary.decisions, summary.changed], [messages, 4]);
  assert.deepEqual(summary.groups.map((g) => [g.from, g.to, g.count]), [['none', 'reject', 4]]);
});
