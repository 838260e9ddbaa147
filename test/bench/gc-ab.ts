/**
 * Developer aid: `node test/bench/gc-ab.ts <treeA> <treeB> [<treeC>…]` serves benchmark (a) from each source tree
 * under `node --trace-gc-nvp` and prints, per message, what the event-loop isolate's garbage collector saw: bytes
 * allocated, bytes that survived a scavenge, bytes promoted to the old generation, scavenges and mark-compacts
 * and their pause times (and bytes the sandbox isolates allocated, apart). These hardly depend on the machine's
 * load, unlike CPU times, which are printed too (per thread) for reference only. The new space is fixed at
 * 16 MB (GC_SEMI_SPACE_MB, as --min/--max-semi-space-size, which Node 24's V8 applies to the whole new space; 0: V8's
 * own sizing, 32–64 MB under this load, whose growth and shrinking make survival figures vary from run to run).
 * GC_MESSAGES (default 4000) and GC_ROUNDS (2) set the size; GC_NODE_ARGS adds Node options to every server,
 * GC_NODE_ARGS_A / GC_NODE_ARGS_B… to one (the same tree twice with GC_SEMI_SPACE_MB=0 compares V8 settings).
 * GC_WARM (default 2000) messages warm each server first: the optimising compiler keeps working for ~20 000.
 */
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fork, type ChildProcess } from 'node:child_process';
import { makeTestPki } from '../helpers/pki.ts';
import { benchConfig, benchPort, writeBenchFolder } from './bench-config.ts';
import { load } from './measure.ts';

const trees = process.argv.slice(2).map((t) => resolve(t));
if (trees.length < 1) {
  console.error('usage: node test/bench/gc-ab.ts <treeA> [<treeB>…]');
  process.exit(2);
}
const messages = Number(process.env.GC_MESSAGES ?? 4000);
const rounds = Number(process.env.GC_ROUNDS ?? 2);
const semiSpaceMb = Number(process.env.GC_SEMI_SPACE_MB ?? 16);
const nodeArgs = [
  '--trace-gc-nvp',
  '--trace-opt', // what the optimising compiler still does (its concurrent phase runs on V8's helper threads)
  ...(semiSpaceMb > 0 ? [`--min-semi-space-size=${semiSpaceMb}`, `--max-semi-space-size=${semiSpaceMb}`] : []),
  ...(process.env.GC_NODE_ARGS ?? '').split(' ').filter(Boolean),
];
const pki = await makeTestPki();
const work = await mkdtemp(join(tmpdir(), 'postern-gcab-'));

/** CPU µs by thread name of process `pid` so far. */
async function threadCpu(pid: number): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const task of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const stat = await readFile(`/proc/${pid}/task/${task}/stat`, 'utf8').catch(() => '');
    const name = /\((.*)\)/.exec(stat)?.[1] ?? '?';
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out[name] = (out[name] ?? 0) + (Number(fields[11]) + Number(fields[12])) * 1e4;
  }
  return out;
}

interface Server { tree: string; child: ChildProcess; port: number; main: string; lines: string[]; sums: Record<string, number>; cpu: Record<string, number>; msgs: number; newSpace: number[]; rssMb: number }
const add = (m: Record<string, number>, k: string, v: number): void => { m[k] = (m[k] ?? 0) + v; };
const servers: Server[] = [];
process.on('exit', () => { for (const s of servers) s.child.kill('SIGKILL'); });
for (const [i, tree] of trees.entries()) {
  const dir = join(work, String(i));
  await writeBenchFolder(dir);
  const port = benchPort();
  const own = (process.env[`GC_NODE_ARGS_${String.fromCharCode(65 + i)}`] ?? '').split(' ').filter(Boolean);
  const child = fork(join(tree, 'test/bench/postern-server.ts'), [JSON.stringify({ configText: benchConfig(dir, port, pki), baseDir: dir })],
    { execArgv: [...nodeArgs, ...own], stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const s: Server = { tree, child, port, main: '', lines: [], sums: {}, cpu: {}, msgs: 0, newSpace: [], rssMb: 0 };
  let partial = '';
  child.stdout!.on('data', (d: Buffer) => {
    const parts = (partial + d.toString()).split('\n');
    partial = parts.pop()!;
    for (const line of parts) {
      // Each isolate prints its own lines; the first to print is the event loop's (the sandbox's come later).
      const isolate = /^\[(\d+:0x[0-9a-f]+)/.exec(line)?.[1];
      if (isolate && !s.main) s.main = isolate;
      s.lines.push(line);
    }
  });
  await new Promise<void>((ready, fail) => {
    child.once('message', () => ready());
    child.once('exit', (code) => fail(new Error(`${tree}: server exited ${code}`)));
  });
  servers.push(s);
}
for (const s of servers) await load(pki, s.port, 100, Number(process.env.GC_WARM ?? 2000), true); // JIT, isolates and caches warm before anything counts

for (let round = 0; round < rounds; round++) {
  for (const s of round % 2 === 0 ? servers : [...servers].reverse()) {
    s.lines.length = 0;
    const cpu0 = await threadCpu(s.child.pid!);
    const r = await load(pki, s.port, 100, messages, true);
    await new Promise((settle) => setTimeout(settle, 200)); // the last lines of the round
    const cpu1 = await threadCpu(s.child.pid!);
    s.rssMb = Math.max(s.rssMb, Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${s.child.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024);
    for (const k of Object.keys(cpu1)) add(s.cpu, k, cpu1[k]! - (cpu0[k] ?? 0));
    s.msgs += r.messages;
    for (const line of s.lines) {
      // "[completed compiling … - took 0.02, 11.49, 0.08 ms]": the middle phase runs on a helper thread (any isolate's).
      const compiled = /^\[completed compiling .* took [\d.]+, ([\d.]+), [\d.]+ ms/.exec(line);
      if (compiled) { add(s.sums, 'optimising compiler, helper threads ms', Number(compiled[1])); continue; }
      const isolate = /^\[(\d+:0x[0-9a-f]+)/.exec(line)?.[1];
      const field = (name: string): number => Number(new RegExp(`(?:^|\\s)${name}=([\\d.]+)`).exec(line)?.[1] ?? 0);
      const gc = /\sgc=(\S+)/.exec(line)?.[1];
      if (!gc) continue;
      // A sandbox isolate's first line after some flags can carry a bogus `allocated` (~2^61): left out.
      if (isolate !== s.main) { if (field('allocated') < 2 ** 40) add(s.sums, 'sandbox isolates: allocated B', field('allocated')); continue; }
      const kind = gc === 's' ? 'scavenge' : gc;
      add(s.sums, `${kind}s`, 1);
      add(s.sums, `${kind} pause ms`, field('pause'));
      add(s.sums, 'allocated B', field('allocated'));
      add(s.sums, 'survived a scavenge B', field('new_space_survived'));
      add(s.sums, 'promoted B', field('promoted'));
      if (kind === 'scavenge') add(s.sums, 'scavenge helper threads ms', field('background.scavenge.parallel'));
      if (field('new_space_capacity')) s.newSpace.push(field('new_space_capacity') / 2 ** 20);
    }
  }
}
for (const s of servers) s.child.kill('SIGKILL');
await rm(work, { recursive: true, force: true });

console.log(`${trees.map((t, i) => `${String.fromCharCode(65 + i)} = ${t} ${process.env[`GC_NODE_ARGS_${String.fromCharCode(65 + i)}`] ?? ''}`).join('\n')}\n${rounds} rounds × ${messages} messages; node ${nodeArgs.join(' ')}`);
console.log(`per message (B), or per 1000 messages (counts, ms)`.padEnd(40) + servers.map((_, i) => String.fromCharCode(65 + i).padStart(10)).join(''));
const keys = [...new Set(servers.flatMap((s) => Object.keys(s.sums)))].sort();
for (const k of keys) {
  const bytes = k.endsWith(' B');
  console.log(k.padEnd(40) + servers.map((s) => ((s.sums[k] ?? 0) / s.msgs * (bytes ? 1 : 1000)).toFixed(bytes ? 0 : 2).padStart(10)).join(''));
}
// The new space V8 chose (it grows and shrinks with survival and idleness), and the resident memory it costs.
console.log('new space capacity MB (min–max)'.padEnd(40) + servers.map((s) => `${Math.min(...s.newSpace)}–${Math.max(...s.newSpace)}`.padStart(10)).join(''));
console.log('RSS MB after a round (max)'.padEnd(40) + servers.map((s) => s.rssMb.toFixed(0).padStart(10)).join(''));
for (const k of [...new Set(servers.flatMap((s) => Object.keys(s.cpu)))].sort()) {
  console.log(`CPU µs/msg ${k} *`.padEnd(40) + servers.map((s) => ((s.cpu[k] ?? 0) / s.msgs).toFixed(1).padStart(10)).join(''));
}
console.log('* CPU times depend on the machine\'s load; the GC figures above hardly do.');
