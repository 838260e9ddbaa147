/**
 * Developer aid: where `postern serve`'s CPU goes, process by process (supervisor, each worker, the queue
 * process) and thread by thread (event loop, V8's GC helpers, libuv's pool: the journal's fdatasyncs), against
 * the single-process server, for one load run of benchmark (a) after a warm-up. SPLIT_WORKERS (default 1; 0:
 * the single process), SPLIT_MESSAGES (3000), SPLIT_PER_CONN (100), SPLIT_SCRIPTS=0 (benchmark (b)), SPLIT_RATE=memory (mailfrom awaits rate() on the memory store),
 * SPLIT_STRACE=1 (system calls per message of each process, `strace -c -f`; =threads: per thread name, slow),
 * SPLIT_PROF=1 (--cpu-prof in every process; the hottest functions of the measured run alone), SPLIT_NODE_ARGS,
 * SPLIT_PERF=1 (`perf record -e cpu-clock` of each process during the run, on-CPU: the hottest symbols per
 * message; start with SPLIT_NODE_ARGS=--perf-basic-prof-only-functions for JavaScript names),
 * SPLIT_IDLE=<seconds> (each process's CPU while no client is connected, measured that long before the run:
 * what it costs per second whatever the load, against what the run added per message).
 * Figures are per message of the whole run (a worker of two serves about half of them).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, readFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki } from '../helpers/pki.ts';
import { BENCH_SCRIPTS, RATE_MAILFROM, benchConfig, benchPort } from './bench-config.ts';
import { cpuSeconds, load, startServer } from './measure.ts';

const workers = Number(process.env.SPLIT_WORKERS ?? 1);
const messages = Number(process.env.SPLIT_MESSAGES ?? 3000);
const perConn = Number(process.env.SPLIT_PER_CONN ?? 100);
const pki = await makeTestPki();
const dir = await mkdtemp(join(tmpdir(), 'postern-split-'));
await mkdir(join(dir, 'scripts'));
// SPLIT_RATE=memory: the mailfrom script also awaits rate() on the memory store (under serve, the supervisor's).
const scripts = process.env.SPLIT_RATE === 'memory' ? { ...BENCH_SCRIPTS, 'mailfrom.ts': RATE_MAILFROM } : BENCH_SCRIPTS;
if (process.env.SPLIT_SCRIPTS !== '0') for (const [f, t] of Object.entries(scripts)) await writeFile(join(dir, 'scripts', f), t);
await writeFile(join(dir, 'senders'), 'example.org blocked\n');
const port = benchPort();
const script = workers ? 'postern-serve.ts' : 'postern-server.ts';
const profDir = process.env.SPLIT_PROF ? join(dir, 'prof') : null;
const nodeArgs = [...(process.env.SPLIT_NODE_ARGS?.split(' ').filter(Boolean) ?? []), ...(profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [])];
const server = await startServer(script, { configText: benchConfig(dir, port, pki), baseDir: dir, workers }, false, nodeArgs);
// Killed or failing, this script takes the server with it (its children follow their supervisor).
process.on('exit', () => { try { process.kill(server.pid, 'SIGKILL'); } catch { /* gone */ } });
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(1));
await load(pki, port, perConn, Math.min(1000, messages), true); // warm-up: JIT, isolates

/** Every process of the tree with its role. */
async function tree(pid: number, name = 'supervisor'): Promise<Array<{ pid: number; name: string }>> {
  const out = [{ pid, name }];
  for (const task of await readdir(`/proc/${pid}/task`)) {
    const kids = (await readFile(`/proc/${pid}/task/${task}/children`, 'utf8')).trim().split(/\s+/).filter(Boolean).map(Number);
    for (const k of kids) {
      const env = await readFile(`/proc/${k}/environ`, 'utf8').catch(() => '');
      const role = /POSTERN_ROLE=(\w+)/.exec(env)?.[1] ?? '?';
      const w = /POSTERN_WORKER=(\d+)/.exec(env)?.[1] ?? '';
      out.push(...await tree(k, `${role} ${w}`));
    }
  }
  return out;
}
const procs = await tree(server.pid);
const threads = async (pid: number): Promise<Map<string, number>> => {
  const m = new Map<string, number>();
  for (const t of await readdir(`/proc/${pid}/task`)) {
    const comm = (await readFile(`/proc/${pid}/task/${t}/comm`, 'utf8').catch(() => 'gone')).trim();
    // schedstat: nanoseconds on a CPU, exact (stat's ticks would round each of 16 pool threads down).
    const ns = Number((await readFile(`/proc/${pid}/task/${t}/schedstat`, 'utf8').catch(() => '0')).split(' ')[0]);
    m.set(`${t} ${comm}`, ns / 1e9);
  }
  return m;
};
/** CPU seconds of all threads of a process (schedstat: exact, unlike /proc/<pid>/stat's 10 ms ticks). */
const processCpu = async (pid: number): Promise<number> => [...(await threads(pid)).values()].reduce((a, b) => a + b, 0);
const idleSeconds = Number(process.env.SPLIT_IDLE ?? 0);
const idle = new Map<number, number>(); // pid → CPU seconds per second without clients
if (idleSeconds > 0) {
  await new Promise((r) => setTimeout(r, 1000)); // the warm-up's sessions and spool writes settle
  const at0 = await Promise.all(procs.map((p) => processCpu(p.pid)));
  await new Promise((r) => setTimeout(r, idleSeconds * 1000));
  for (const [i, p] of procs.entries()) idle.set(p.pid, (await processCpu(p.pid) - at0[i]!) / idleSeconds);
}
const before = await Promise.all(procs.map(async (p) => ({ cpu: await cpuSeconds(p.pid), th: await threads(p.pid) })));
// One strace per process (its threads with -f), so each process's system calls are told apart.
// SPLIT_STRACE=threads: every call logged, then counted per thread name (slower under trace).
const perThread = process.env.SPLIT_STRACE === 'threads';
// Outside `dir` too (the supervisor watches it): with =threads strace writes as it traces.
const straceDir = process.env.SPLIT_STRACE ? await mkdtemp(join(tmpdir(), 'postern-split-strace-')) : dir;
const straces = process.env.SPLIT_STRACE ? procs.map((p) => spawn('strace', [perThread ? '-qq' : '-c', '-f', '-o', join(straceDir, `strace-${p.pid}.txt`), '-p', String(p.pid)], { stdio: 'ignore' })) : [];
const comms = new Map<number, string>();
for (const p of procs) for (const t of await readdir(`/proc/${p.pid}/task`)) comms.set(Number(t), (await readFile(`/proc/${p.pid}/task/${t}/comm`, 'utf8').catch(() => 'gone')).trim());
const perfHz = 1000;
// Not in `dir`: the supervisor watches the configuration's folder, and perf writes its file as it records.
const perfDir = process.env.SPLIT_PERF ? await mkdtemp(join(tmpdir(), 'postern-split-perf-')) : dir;
const perfs = process.env.SPLIT_PERF ? procs.map((p) => spawn('perf', ['record', '-q', '-e', 'cpu-clock', '-F', String(perfHz), '-p', String(p.pid), '-o', join(perfDir, `perf-${p.pid}.data`)], { stdio: 'ignore' })) : [];
if (straces.length || perfs.length) await new Promise((r) => setTimeout(r, 1000));
const t0 = process.hrtime.bigint() / 1000n;
const r = await load(pki, port, perConn, messages, true);
const t1 = process.hrtime.bigint() / 1000n;
for (const s of [...straces, ...perfs]) { s.kill('SIGINT'); await new Promise((res) => s.once('exit', res)); }
let total = 0;
for (const [i, p] of procs.entries()) {
  const cpu = (await cpuSeconds(p.pid) - before[i]!.cpu) / r.messages * 1e6;
  total += cpu;
  const perSecond = idle.get(p.pid);
  // Idle CPU per second, divided by this run's rate: the part of the µs/msg that is per second, not per message.
  const idleNote = perSecond === undefined ? '' : `  (idle: ${(perSecond * 1000).toFixed(1)} ms/s, at this run's rate ${(perSecond / r.rate * 1e6).toFixed(1)} µs/msg)`;
  console.log(`${p.name.padEnd(12)} ${cpu.toFixed(0).padStart(5)} µs/msg${idleNote}`);
  const th = await threads(p.pid);
  const rows: Array<[string, number]> = [];
  const byComm = new Map<string, number>();
  for (const [k, v] of th) { const comm = k.split(' ').slice(1).join(' '); byComm.set(comm, (byComm.get(comm) ?? 0) + (v - (before[i]!.th.get(k) ?? 0))); }
  for (const [k, v] of byComm) if (v > 0) rows.push([k, v / r.messages * 1e6]);
  for (const [k, v] of rows.sort((a, b) => b[1] - a[1])) console.log(`    ${k.padEnd(20)} ${v.toFixed(1).padStart(6)}`);
}
console.log(`total ${total.toFixed(0)} µs/msg, ${r.rate.toFixed(0)} msg/s, ${r.messages} messages, ${perConn} per connection`);
for (const p of straces.length ? procs : []) {
  const text = await readFile(join(straceDir, `strace-${p.pid}.txt`), 'utf8');
  const calls: string[] = [];
  if (perThread) {
    const counts = new Map<string, number>();
    for (const line of text.split('\n')) {
      const m = /^(\d+)\s+(?:<\.\.\. )?(\w+)/.exec(line);
      if (!m || line.includes('resumed>')) continue;
      const key = `${comms.get(Number(m[1])) ?? 'new thread'} ${m[2]}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    for (const [k, v] of [...counts].sort((a, b) => b[1] - a[1])) if (v / r.messages >= 0.02) calls.push(`${k} ${(v / r.messages).toFixed(2)}`);
    console.log(`${p.name} system calls per message, by thread:\n    ${calls.join('\n    ')}`);
    continue;
  }
  for (const line of text.split('\n')) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$/.exec(line);
    if (m && Number(m[1]) / r.messages >= 0.02) calls.push(`${m[2]} ${(Number(m[1]) / r.messages).toFixed(2)}`);
  }
  console.log(`${p.name} system calls per message: ${calls.join(', ')}`);
}
for (const p of perfs.length ? procs : []) {
  // Samples per symbol (self), as µs per message: each sample is 1/perfHz s of CPU.
  const out = await new Promise<string>((res) => {
    const rep = spawn('perf', ['report', '-q', '-i', join(perfDir, `perf-${p.pid}.data`), '--no-children', '--sort', 'dso,sym', '-F', 'sample,dso,sym', '--stdio'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let text = '';
    rep.stdout.on('data', (d: Buffer) => { text += d; });
    rep.once('exit', () => res(text));
  });
  const rows = out.split('\n').map((l) => /^\s*(\d+)\s+(.+?)\s+\[.\]\s+(.*)$/.exec(l)).filter((m) => m !== null);
  const total = rows.reduce((a, m) => a + Number(m[1]), 0);
  const byDso = new Map<string, number>();
  for (const m of rows) byDso.set(m[2]!, (byDso.get(m[2]!) ?? 0) + Number(m[1]));
  const us = (n: number): string => (n / perfHz / r.messages * 1e6).toFixed(1);
  console.log(`\n${p.name} perf: ${us(total)} µs/msg sampled; ${[...byDso].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([d, n]) => `${d} ${us(n)}`).join(', ')}`);
  for (const m of rows.sort((a, b) => Number(b[1]) - Number(a[1])).slice(0, Number(process.env.SPLIT_TOP ?? 40))) console.log(`  ${us(Number(m[1])).padStart(6)} ${m[2]!.slice(0, 24).padEnd(24)} ${m[3]!.slice(0, 110)}`);
}
if (profDir) {
  // A clean stop writes the profiles (--cpu-prof); only the samples of the measured run count.
  process.kill(server.pid, 'SIGINT');
  await new Promise((res) => setTimeout(res, 4000));
  for (const file of await readdir(profDir)) {
    const prof = JSON.parse(await readFile(join(profDir, file), 'utf8')) as { nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number } }>; samples: number[]; timeDeltas: number[]; startTime: number };
    const byId = new Map(prof.nodes.map((n) => [n.id, n]));
    const self = new Map<string, number>();
    let t = prof.startTime;
    let total = 0;
    for (const [i, s] of prof.samples.entries()) {
      const dt = prof.timeDeltas[i + 1] ?? 0;
      t += prof.timeDeltas[i]!;
      if (t < Number(t0) || t > Number(t1)) continue;
      const f = byId.get(s)!.callFrame;
      const key = `${f.functionName || '(anon)'} ${f.url.split('/').slice(-2).join('/')}:${f.lineNumber}`;
      self.set(key, (self.get(key) ?? 0) + dt);
      total += dt;
    }
    if (total === 0) continue;
    console.log(`\n${file}: ${(total / r.messages).toFixed(1)} µs/msg sampled`);
    for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.SPLIT_TOP ?? 25))) console.log(`  ${(v / r.messages).toFixed(1).padStart(6)} ${k}`);
  }
} else server.stop();
