/**
 * `node test/bench/serve-start.ts <treeA> <treeB> [<treeC>…]`: the CPU one start and stop of `postern serve` costs,
 * per process role, for each tree (e.g. a `git worktree` of main and your change). Each round starts every tree once,
 * in turn, on a fresh configuration folder (workers: 2, one listener, no delivery), waits for 'supervisor started',
 * then stops it with SIGTERM; each process of it writes its CPU at exit (test/bench/cpu-at-exit.ts, preloaded).
 * SERVE_START_ROUNDS (default 8) rounds, after one unmeasured round that fills each tree's compile cache (a folder of
 * its own under the run's, NODE_COMPILE_CACHE, as a test run has). Reported per tree: the median CPU of the
 * supervisor, a worker, the queue process and the whole tree, and B/A of the whole per round (paired: the machine's
 * load drifts alike for the two runs of a round).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort } from '../helpers/free-port.ts';

const trees = process.argv.slice(2).map((t) => resolve(t));
if (trees.length < 2 || trees.some((t) => !existsSync(join(t, 'engine/cli/main.ts')))) {
  console.error('usage: node test/bench/serve-start.ts <treeA> <treeB> [<treeC>…]   (each a Postern source tree with node_modules)');
  process.exit(2);
}
const rounds = Number(process.env.SERVE_START_ROUNDS ?? 8);
const hook = new URL('./cpu-at-exit.ts', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'postern-serve-start-'));

type Run = { supervisor: number; worker: number; queue: number; total: number };

async function startAndStop(tree: string, index: number): Promise<Run> {
  const dir = mkdtempSync(join(work, 'run-'));
  mkdirSync(join(dir, 'scripts'));
  writeFileSync(join(dir, 'postern.yaml'), `dataDir: ${join(dir, 'data')}\nscripts: ${join(dir, 'scripts')}\nworkers: 2\n` +
    `listeners:\n  - name: in\n    listen: 127.0.0.1:${await freePort()}\n    reverseDns: false\n`);
  const log = join(dir, 'cpu.jsonl');
  const env = { ...process.env, NODE_NO_WARNINGS: '1', NODE_COMPILE_CACHE: join(work, `cache-${index}`), SERVE_START_CPU_LOG: log,
    NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import ${hook}`.trim() };
  const proc = spawn(join(tree, 'node_modules/.bin/node'), [join(tree, 'engine/cli/main.ts'), 'serve', '--config', join(dir, 'postern.yaml')],
    { stdio: ['ignore', 'pipe', 'inherit'], env });
  const exited = new Promise((r) => proc.once('exit', r));
  let out = '';
  await new Promise<void>((ok, fail) => {
    proc.stdout!.on('data', (d: Buffer) => { out += d; if (out.includes('supervisor started')) ok(); });
    proc.once('exit', () => fail(new Error(`${tree}: ended before 'supervisor started':\n${out}`)));
  });
  proc.kill('SIGTERM');
  await exited;
  const lines = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { role: string; cpuMs: number });
  rmSync(dir, { recursive: true, force: true });
  const of = (role: string): number[] => lines.filter((l) => l.role === role).map((l) => l.cpuMs);
  if (of('supervisor').length !== 1 || of('worker').length !== 2 || of('queue').length !== 1) throw new Error(`${tree}: processes ${JSON.stringify(lines)}`);
  const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
  return { supervisor: of('supervisor')[0]!, worker: sum(of('worker')) / 2, queue: of('queue')[0]!, total: sum(lines.map((l) => l.cpuMs)) };
}

const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2; };
const results = trees.map(() => [] as Run[]);
try {
  for (const [i, tree] of trees.entries()) await startAndStop(tree, i); // fills the compile caches
  for (let round = 0; round < rounds; round++) {
    // Alternated: A first in even rounds, last in odd ones.
    const order = round % 2 ? [...trees.keys()].reverse() : [...trees.keys()];
    for (const i of order) results[i]!.push(await startAndStop(trees[i]!, i));
    const totals = results.map((r) => r.at(-1)!.total.toFixed(0));
    console.log(`round ${round + 1}: total CPU ms ${totals.join(' / ')}`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
const names = trees.map((_, i) => String.fromCharCode(65 + i));
console.log('tree  supervisor  worker  queue  total (median CPU ms)  total/A per round (median)');
for (const [i, rs] of results.entries()) {
  const ratio = median(rs.map((r, k) => r.total / results[0]![k]!.total));
  console.log(`${names[i]} ${trees[i]}: ${(['supervisor', 'worker', 'queue', 'total'] as const).map((k) => median(rs.map((r) => r[k])).toFixed(0)).join('  ')}  ${ratio.toFixed(3)}`);
}
