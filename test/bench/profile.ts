/**
 * Developer aid: run one Postern bench target under --cpu-prof (PROF_SCRIPTS=1: benchmark (a)'s scripts;
 * PROF_RATE=memory|redis: its mailfrom script also awaits rate(), as in bench:store) and print the hottest functions.
 */
import { fork } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki } from '../helpers/pki.ts';
import { BENCH_SCRIPTS, RATE_MAILFROM, benchConfig, benchPort } from './bench-config.ts';
import { startRedis } from '../helpers/redis-server.ts';

const here = import.meta.dirname;
const pki = await makeTestPki();
const dir = await mkdtemp(join(tmpdir(), 'postern-prof-'));
await mkdir(join(dir, 'scripts'));
if (process.env.PROF_SCRIPTS) {
  for (const [file, text] of Object.entries(BENCH_SCRIPTS)) await writeFile(join(dir, 'scripts', file), text);
}
const port = benchPort();
await writeFile(join(dir, 'senders'), 'example.org blocked\n');
let configText = benchConfig(dir, port, pki);
const redis = process.env.PROF_RATE === 'redis' ? await startRedis() : null;
if (process.env.PROF_RATE) {
  await writeFile(join(dir, 'scripts', 'mailfrom.ts'), RATE_MAILFROM);
  if (redis) configText += `store: { redis: { url: "${redis.url}", keyPrefix: "prof:", timeoutMs: 90 } }\n`; // as bench:store
}
const server = fork(join(here, 'postern-server.ts'), [JSON.stringify({ configText, baseDir: dir })], { execArgv: ['--cpu-prof', `--cpu-prof-dir=${dir}/prof`], stdio: 'inherit' });
await new Promise((r) => server.once('message', r));
const client = fork(join(here, 'load-client.ts'), [JSON.stringify({ port, concurrency: 20, messages: Number(process.env.PROF_MESSAGES ?? 3000), perConnection: Number(process.env.PROF_PER_CONN ?? 100), cert: pki.clients.ecdsa.cert, key: pki.clients.ecdsa.key, ca: pki.ca.cert, auth: true })], { stdio: 'inherit' });
await new Promise((r) => client.once('exit', r));
server.kill('SIGINT');
await new Promise((r) => server.once('exit', r));
await redis?.stop();
const file = (await readdir(join(dir, 'prof')))[0]!;
const prof = JSON.parse(await readFile(join(dir, 'prof', file), 'utf8')) as { nodes: Array<{ id: number; children?: number[]; callFrame: { functionName: string; url: string; lineNumber: number } }>; samples: number[]; startTime: number; endTime: number };
const counts = new Map<number, number>();
for (const s of prof.samples) counts.set(s, (counts.get(s) ?? 0) + 1);
const byFn = new Map<string, number>();
for (const n of prof.nodes) {
  const key = `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber}`;
  byFn.set(key, (byFn.get(key) ?? 0) + (counts.get(n.id) ?? 0));
}
const total = prof.samples.length;
const messages = Number(process.env.PROF_MESSAGES ?? 3000);
// Samples are taken at a fixed interval while the thread runs JavaScript or V8; µs per message makes runs comparable.
const usPerSample = (prof.endTime - prof.startTime) / total;
const show = (v: number): string => `${(100 * v / total).toFixed(1).padStart(5)}% ${(v * usPerSample / messages).toFixed(1).padStart(7)} µs/msg`;
for (const [k, v] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, 30)) console.log(show(v), k);

// Inclusive time of Postern's own functions (PROF_INCLUSIVE=1): where the engine's time goes, callees included.
if (process.env.PROF_INCLUSIVE) {
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const inclusive = new Map<number, number>();
  const sum = (id: number): number => {
    const n = byId.get(id)!;
    const v = (counts.get(id) ?? 0) + (n.children ?? []).reduce((a, c) => a + sum(c), 0);
    inclusive.set(id, v);
    return v;
  };
  sum(prof.nodes[0]!.id);
  const engineFns = new Map<string, number>();
  for (const n of prof.nodes) {
    if (!n.callFrame.url.includes('/engine/')) continue;
    const key = `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber}`;
    engineFns.set(key, (engineFns.get(key) ?? 0) + inclusive.get(n.id)!);
  }
  console.log('\ninclusive (engine/):');
  for (const [k, v] of [...engineFns].sort((a, b) => b[1] - a[1]).slice(0, 40)) console.log(show(v), k);
}
