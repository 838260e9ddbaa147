/**
 * Developer aid: `node test/bench/profile-ab.ts <treeA> <treeB>` profiles benchmark (a) (with reuse) served by two
 * source trees, after a warm-up, rounds alternating, and prints the event-loop thread's CPU per message by module
 * (self time, and time charged to the deepest engine/ folder on the stack) for A, B and B − A.
 * PROF_HEAP=1: bytes allocated per message instead (sampled, collected objects included); PROF_HEAP=live: bytes
 * per message still reachable after a full GC at the end of each round (what the server keeps per message);
 * PROF_HEAP=promoted: bytes per message that outlived the young generation (moved to the old one: major GC work).
 * PROF_SORT=b: rows by B's figure, largest first (default: by |B − A|).
 * PROF_MESSAGES (default 3000) and PROF_ROUNDS (2) set the size; PROF_PER_CONN (default 100) the messages per
 * connection (1: a connection, STARTTLS and client certificate per message, per-connection costs).
 * PROF_RATE=redis|memory: the mailfrom script also awaits rate() (as AB_RATE in bench:ab), on a Redis store (one
 * redis-server started here, a key prefix per tree; its CPU and system calls per message are printed too) or the memory one.
 * PROF_RATE_A / PROF_RATE_B: that side's own (none, async — the mailfrom script made async without a store call —,
 * memory or redis), e.g. the same tree twice to see what a rate() adds: `PROF_RATE_A=none PROF_RATE_B=memory … . .`.
 */
import { mkdtemp, writeFile, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fork, type ChildProcess } from 'node:child_process';
import { makeTestPki } from '../helpers/pki.ts';
import { ASYNC_MAILFROM, BENCH_SCRIPTS, RATE_MAILFROM, benchConfig, benchPort, writeBenchFolder } from './bench-config.ts';
import { cpuSeconds, load, measure } from './measure.ts';
import { startRedis } from '../helpers/redis-server.ts';

const trees = process.argv.slice(2, 4).map((t) => resolve(t));
const messages = Number(process.env.PROF_MESSAGES ?? 3000);
const rounds = Number(process.env.PROF_ROUNDS ?? 2);
const perConnection = Number(process.env.PROF_PER_CONN ?? 100);
const withRate = process.env.PROF_RATE;
if (withRate && withRate !== 'redis' && withRate !== 'memory') throw new Error('PROF_RATE: redis or memory');
const rateOf = (side: 'A' | 'B'): string => process.env[`PROF_RATE_${side}`] ?? withRate ?? 'none';
for (const side of ['A', 'B'] as const) if (!['none', 'async', 'memory', 'redis'].includes(rateOf(side))) throw new Error(`PROF_RATE_${side}: none, async, memory or redis`);
const redis = rateOf('A') === 'redis' || rateOf('B') === 'redis' ? await startRedis() : null;
process.on('exit', () => { if (redis?.pid) process.kill(redis.pid, 'SIGKILL'); });
const pki = await makeTestPki();
const work = await mkdtemp(join(tmpdir(), 'postern-profab-'));
const hook = join(work, 'hook.mjs');
// Preloaded into each server: IPC messages start and stop the inspector's CPU profiler, so start-up is not profiled.
await writeFile(hook, `import { Session } from 'node:inspector/promises';
import { writeFileSync } from 'node:fs';
const session = new Session(); session.connect();
const heap = ['1', 'live', 'promoted'].includes(process.env.PROF_HEAP ?? '');
const live = process.env.PROF_HEAP === 'live';
const promoted = process.env.PROF_HEAP === 'promoted';
process.on('message', async (m) => {
  if (m === 'prof-start') {
    if (heap) {
      await session.post('HeapProfiler.enable');
      await session.post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: !live, includeObjectsCollectedByMinorGC: !live && !promoted });
    } else {
      await session.post('Profiler.enable'); await session.post('Profiler.setSamplingInterval', { interval: 250 }); await session.post('Profiler.start');
    }
    process.send('prof-ack');
  } else if (typeof m === 'string' && m.startsWith('prof-stop:')) {
    if (heap) {
      if (live) await session.post('HeapProfiler.collectGarbage'); // what is still reachable, not garbage not yet collected
      const { profile } = await session.post('HeapProfiler.stopSampling');
      writeFileSync(m.slice(10), JSON.stringify(profile));
    } else {
      const { profile } = await session.post('Profiler.stop'); writeFileSync(m.slice(10), JSON.stringify(profile));
    }
    process.send('prof-ack');
  }
});`);

interface Node { id: number; children?: number[]; callFrame: { functionName: string; url: string; lineNumber: number } }
interface Profile { nodes: Node[]; samples: number[]; timeDeltas: number[] }
const servers: Array<{ name: string; child: ChildProcess; port: number; self: Map<string, number>; owner: Map<string, number>; fn: Map<string, number>; incl: Map<string, number>; io: Map<string, number>; msgs: number; cpu: number; main: number }> = [];
for (const [i, tree] of trees.entries()) {
  const dir = join(work, String(i));
  const rate = rateOf(i === 0 ? 'A' : 'B');
  const mailfrom = rate === 'none' ? null : rate === 'async' ? ASYNC_MAILFROM : RATE_MAILFROM;
  await writeBenchFolder(dir, mailfrom ? { ...BENCH_SCRIPTS, 'mailfrom.ts': mailfrom } : BENCH_SCRIPTS);
  const port = benchPort();
  // With rate(): time limits raised as in bench:ab (a loaded machine measures cost, not timeouts).
  const store = (mailfrom ? 'sandbox: { timeoutMs: 2000 }\n' : '') + (rate === 'redis' ? `store: { redis: { url: "${redis!.url}", keyPrefix: "p${i}:", timeoutMs: 1000 } }\n` : '');
  const child = fork(join(tree, 'test/bench/postern-server.ts'), [JSON.stringify({ configText: benchConfig(dir, port, pki) + store, baseDir: dir })], { execArgv: ['--import', hook], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  await new Promise((r) => child.once('message', r));
  servers.push({ name: i === 0 ? 'A' : 'B', child, port, self: new Map(), owner: new Map(), fn: new Map(), incl: new Map(), io: new Map(), msgs: 0, cpu: 0, main: 0 });
}
// Warm both (JIT, isolates); a Redis store connects in the background, refusing until then.
for (const s of servers) {
  for (let attempt = 1; ; attempt++) {
    try {
      await load(pki, s.port, perConnection, perConnection === 1 ? 600 : 2000, true);
      break;
    } catch (err) {
      if (attempt === 5) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** System calls that read and write (all threads) and context switches of the server so far. */
async function ioCounts(pid: number): Promise<Record<string, number>> {
  const io = await readFile(`/proc/${pid}/io`, 'utf8');
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (text: string, name: string): number => Number(new RegExp(`^${name}:\\s*(\\d+)`, 'm').exec(text)?.[1] ?? 0);
  const counts: Record<string, number> = { syscr: field(io, 'syscr'), syscw: field(io, 'syscw'), ctxsw: field(status, 'voluntary_ctxt_switches') + field(status, 'nonvoluntary_ctxt_switches') };
  // CPU µs by thread name (the event loop is 'node'; V8's helpers, libuv's pool, isolated-vm's threads).
  for (const task of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const stat = await readFile(`/proc/${pid}/task/${task}/stat`, 'utf8').catch(() => '');
    const name = /\((.*)\)/.exec(stat)?.[1] ?? '?';
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const us = (Number(fields[11]) + Number(fields[12])) * 1e4;
    counts[`cpu µs ${name}`] = (counts[`cpu µs ${name}`] ?? 0) + us;
  }
  return counts;
}
/** redis-server's CPU (µs) and read/write system calls so far (PROF_RATE=redis: it serves one tree at a time). */
async function redisCounts(pid: number): Promise<Record<string, number>> {
  const io = await readFile(`/proc/${pid}/io`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s*(\\d+)`, 'm').exec(io)?.[1] ?? 0);
  return { 'redis-server cpu µs': await cpuSeconds(pid) * 1e6, 'redis-server syscr': field('syscr'), 'redis-server syscw': field('syscw') };
}
const ask = (c: ChildProcess, m: string): Promise<unknown> => new Promise((r) => { c.once('message', r); c.send(m); });
const moduleOf = (url: string, fn: string): string => {
  if (!url) return fn.startsWith('(') ? fn : `native ${fn}`;
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) { const p = url.slice(nm + 14).split('/'); return p[0]!.startsWith('@') ? `${p[0]}/${p[1]}` : p[0]!; }
  const e = url.lastIndexOf('/engine/');
  if (e >= 0) { const p = url.slice(e + 1).split('/'); return p.length > 2 ? `${p[0]}/${p[1]}` : `${p[0]}/${p[1]}`; }
  if (url.startsWith('node:')) return url.split('/').slice(0, 3).join('/');
  return url.split('/').slice(-2).join('/');
};
const add = (m: Map<string, number>, k: string, v: number): void => { m.set(k, (m.get(k) ?? 0) + v); };

for (let round = 0; round < rounds; round++) {
  for (const s of round % 2 === 0 ? servers : [...servers].reverse()) {
    const file = join(work, `${s.name}-${round}.cpuprofile`);
    await ask(s.child, 'prof-start');
    const io0 = await ioCounts(s.child.pid!);
    const redis0 = redis ? await redisCounts(redis.pid!) : {};
    const m = await measure(pki, { pid: s.child.pid!, port: s.port }, perConnection, messages, true);
    const io1 = await ioCounts(s.child.pid!);
    for (const k of Object.keys(io1)) add(s.io, k, io1[k]! - (io0[k] ?? 0));
    if (redis) {
      const redis1 = await redisCounts(redis.pid!);
      for (const k of Object.keys(redis1)) add(s.io, k, redis1[k]! - (redis0[k] ?? 0));
    }
    await ask(s.child, `prof-stop:${file}`);
    s.msgs += m.messages; s.cpu += m.cpuUs * m.messages; s.main += m.mainUs * m.messages;
    if (['1', 'live', 'promoted'].includes(process.env.PROF_HEAP ?? '')) {
      // Sampled allocations (collected ones included): bytes allocated per message by function and module.
      interface HeapNode { callFrame: Node['callFrame']; selfSize: number; children: HeapNode[] }
      const { head } = JSON.parse(await readFile(file, 'utf8')) as { head: HeapNode };
      const walk = (n: HeapNode, owner: string): void => {
        const here = n.callFrame.url.includes('/engine/') ? moduleOf(n.callFrame.url, '') : owner;
        if (n.selfSize) {
          add(s.self, moduleOf(n.callFrame.url, n.callFrame.functionName), n.selfSize);
          add(s.owner, here, n.selfSize);
          add(s.fn, `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber}`, n.selfSize);
        }
        for (const c of n.children) walk(c, here);
      };
      walk(head, '(none)');
      continue;
    }
    const prof = JSON.parse(await readFile(file, 'utf8')) as Profile;
    const byId = new Map(prof.nodes.map((n) => [n.id, n]));
    const parent = new Map<number, number>();
    for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    const time = new Map<number, number>();
    prof.samples.forEach((id, k) => time.set(id, (time.get(id) ?? 0) + (prof.timeDeltas[k + 1] ?? 0)));
    // Inclusive time of Postern's own functions (callees included), each function counted once per stack.
    const inclusive = new Map<number, number>();
    const sum = (id: number): number => {
      const n = byId.get(id)!;
      const v = (n.callFrame.functionName === '(idle)' ? 0 : time.get(id) ?? 0) + (n.children ?? []).reduce((t, c) => t + sum(c), 0);
      inclusive.set(id, v);
      return v;
    };
    sum(prof.nodes[0]!.id);
    for (const n of prof.nodes) {
      if (!n.callFrame.url.includes('/engine/')) continue;
      let recursive = false;
      for (let at = parent.get(n.id); at !== undefined; at = parent.get(at)) if (byId.get(at)!.callFrame === n.callFrame || (byId.get(at)!.callFrame.url === n.callFrame.url && byId.get(at)!.callFrame.lineNumber === n.callFrame.lineNumber && byId.get(at)!.callFrame.functionName === n.callFrame.functionName)) { recursive = true; break; }
      if (!recursive) add(s.incl, `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber}`, inclusive.get(n.id)!);
    }
    for (const [id, us] of time) {
      const n = byId.get(id)!;
      if (n.callFrame.functionName === '(idle)') continue;
      add(s.self, moduleOf(n.callFrame.url, n.callFrame.functionName), us);
      // A native function (no url) is shown with its caller: writeUtf8String of a socket and of a file differ.
      const caller = n.callFrame.url ? undefined : byId.get(parent.get(id) ?? -1)?.callFrame;
      add(s.fn, `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber}${caller ? ` < ${caller.functionName || '(anon)'} ${caller.url.split('/').slice(-2).join('/')}:${caller.lineNumber}` : ''}`, us);
      // Charged to the deepest engine/ folder on the stack (its libraries and Node's internals included).
      let owner = moduleOf(n.callFrame.url, n.callFrame.functionName);
      for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
        const u = byId.get(at)!.callFrame.url;
        if (u.includes('/engine/')) { owner = moduleOf(u, ''); break; }
      }
      add(s.owner, owner, us);
    }
  }
}
for (const s of servers) s.child.kill('SIGKILL');
await redis?.stop();
await rm(work, { recursive: true, force: true });

const [a, b] = servers as [typeof servers[0], typeof servers[0]];
const table = (title: string, pick: (s: typeof a) => Map<string, number>, top: number): void => {
  const keys = new Set([...pick(a).keys(), ...pick(b).keys()]);
  const rows = [...keys].map((k) => { const x = (pick(a).get(k) ?? 0) / a.msgs, y = (pick(b).get(k) ?? 0) / b.msgs; return { k, x, y, d: y - x }; });
  const total = rows.reduce((t, r) => ({ x: t.x + r.x, y: t.y + r.y }), { x: 0, y: 0 });
  console.log(`\n${title} (${process.env.PROF_HEAP === '1' ? 'bytes allocated' : process.env.PROF_HEAP === 'live' ? 'bytes still reachable' : process.env.PROF_HEAP === 'promoted' ? 'bytes that outlived a scavenge' : 'µs'}/msg, event-loop thread)   A      B    B−A`);
  for (const r of rows.sort(process.env.PROF_SORT === 'b' ? (p, q) => q.y - p.y : (p, q) => Math.abs(q.d) - Math.abs(p.d)).slice(0, top)) console.log(`${r.k.slice(0, 90).padEnd(92)} ${r.x.toFixed(1).padStart(6)} ${r.y.toFixed(1).padStart(6)} ${(r.d >= 0 ? '+' : '') + r.d.toFixed(1)}`);
  console.log(`${'total'.padEnd(92)} ${total.x.toFixed(1).padStart(6)} ${total.y.toFixed(1).padStart(6)} ${(total.y - total.x >= 0 ? '+' : '') + (total.y - total.x).toFixed(1)}`);
};
console.log(`A = ${trees[0]}\nB = ${trees[1]}\n${rounds} rounds × ${messages} messages each, ${perConnection} per connection (profiler on)${withRate ? `, mailfrom awaits rate() (${withRate} store)` : ''}`);
console.log(`server CPU µs/msg: A ${(a.cpu / a.msgs).toFixed(0)}  B ${(b.cpu / b.msgs).toFixed(0)};  event-loop thread: A ${(a.main / a.msgs).toFixed(0)}  B ${(b.main / b.msgs).toFixed(0)}`);
console.log(`per message: ${[...new Set([...a.io.keys(), ...b.io.keys()])].map((k) => `${k} A ${((a.io.get(k) ?? 0) / a.msgs).toFixed(2)} B ${((b.io.get(k) ?? 0) / b.msgs).toFixed(2)}`).join(';  ')}`);
table('self time by module', (s) => s.self, 30);
table('charged to the deepest engine/ folder', (s) => s.owner, 25);
table('self time by function', (s) => s.fn, Number(process.env.PROF_TOP ?? 50));
table('inclusive time of engine/ functions', (s) => s.incl, Number(process.env.PROF_TOP ?? 50));
