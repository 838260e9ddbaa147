/**
 * Developer aid: `node test/bench/strace-rate.ts` counts the server's system calls per message (strace -c -f, all
 * threads) under benchmark (a) with its mailfrom script as is, made async, awaiting rate() on the memory store and
 * on Redis, over loopback TCP and over its Unix socket (STRACE_TARGETS=none,async,memory,redis,redis-unix). Load-independent: how many writes, reads, fdatasyncs, epoll
 * waits and futex wakes a message costs, which the extra turn of an awaited answer changes. MESSAGES (3000).
 * PERF=1: `perf record` instead (cpu-clock, all threads, kernel included, needs root; --perf-basic-prof names
 * JavaScript frames, isolates' included): each server's CPU per message by symbol (self), largest differences
 * to the first target first (PERF_TOP, 40).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki } from '../helpers/pki.ts';
import { startRedis } from '../helpers/redis-server.ts';
import { ASYNC_MAILFROM, BENCH_SCRIPTS, RATE_MAILFROM, benchConfig, benchPort, writeBenchFolder } from './bench-config.ts';
import { load, startServer, threadsNs } from './measure.ts';

const perf = process.env.PERF === '1';
const HZ = 2000;
const targets = (process.env.STRACE_TARGETS ?? 'none,async,memory,redis').split(',');
const messages = Number(process.env.MESSAGES ?? 3000);
const pki = await makeTestPki();
const redis = targets.some((t) => t.startsWith('redis')) ? await startRedis() : null;
const work = await mkdtemp(join(tmpdir(), 'postern-strace-'));
const stops: Array<() => void> = [];
process.on('exit', () => { for (const s of stops) s(); if (redis?.pid) process.kill(redis.pid, 'SIGKILL'); });
const rows: Array<[string, Map<string, number>]> = [];
type Entries = { eventLoop: number; isolateThread: number } | null;
const entriesOf = (child: ChildProcess): Promise<Entries> => new Promise((r) => {
  child.once('message', (m) => r((m as { slotEntries: Entries }).slotEntries));
  child.send('slot-entries');
});
for (const [i, rate] of targets.entries()) {
  const dir = join(work, String(i));
  const mailfrom = rate === 'none' ? BENCH_SCRIPTS['mailfrom.ts']! : rate === 'async' ? ASYNC_MAILFROM : RATE_MAILFROM;
  await writeBenchFolder(dir, { ...BENCH_SCRIPTS, 'mailfrom.ts': mailfrom });
  const port = benchPort();
  const redisUrl = rate === 'redis-unix' ? redis!.unixUrl : redis?.url;
  const store = rate.startsWith('redis') ? `store: { redis: { url: "${redisUrl}", keyPrefix: "s${i}:", timeoutMs: 1000 } }\n` : '';
  const s = await startServer('postern-server.ts', { configText: benchConfig(dir, port, pki) + 'sandbox: { timeoutMs: 2000 }\n' + store, baseDir: dir }, false, perf ? ['--perf-basic-prof'] : undefined);
  stops.push(s.stop);
  for (let attempt = 1; ; attempt++) {
    try { await load(pki, port, 100, 2000, true); break; } catch (err) { if (attempt === 5) throw err; await new Promise((r) => setTimeout(r, 500)); }
  }
  const out = join(work, `${i}.strace`);
  const r0 = redis?.pid ? await threadsNs(redis.pid) : 0;
  const tracer = perf
    ? spawn('perf', ['record', '-F', String(HZ), '-e', 'cpu-clock', '-o', out, '-p', String(s.pid)], { stdio: 'ignore' })
    : spawn('strace', ['-c', '-f', '-o', out, '-p', String(s.pid)], { stdio: 'ignore' });
  // redis-server's own system calls, beside the server's (its rows start with `redis `).
  const redisOut = join(work, `${i}.redis.strace`);
  const redisTracer = !perf && rate.startsWith('redis') ? spawn('strace', ['-c', '-f', '-o', redisOut, '-p', String(redis!.pid)], { stdio: 'ignore' }) : null;
  const redisTraced = redisTracer ? new Promise((r) => redisTracer.once('exit', r)) : null;
  // Listened for now: a tracer that ends early (perf running out of room) must not leave the run waiting for ever.
  const traced = new Promise((r) => tracer.once('exit', r));
  await new Promise((r) => setTimeout(r, 500));
  const calls = new Map<string, number>();
  const e0 = await entriesOf(s.child);
  const m = await load(pki, port, 100, messages, true);
  const e1 = await entriesOf(s.child);
  // redis-server's CPU per message (µs, all its threads) while this target ran (under strace: for comparing rows only).
  if (rate.startsWith('redis')) calls.set('(redis-server µs)', (await threadsNs(redis!.pid!) - r0) / m.messages / 1000);
  tracer.kill('SIGINT');
  await traced;
  redisTracer?.kill('SIGINT');
  await redisTraced;
  if (e0 && e1) {
    calls.set('(isolate entries, event loop)', (e1.eventLoop - e0.eventLoop) / m.messages);
    calls.set('(isolate entries, threads)', (e1.isolateThread - e0.isolateThread) / m.messages);
  }
  if (perf) {
    const report = await new Promise<string>((r) => {
      let text = '';
      const p = spawn('perf', ['report', '-i', out, '--no-children', '--sort', 'sym', '-n', '--stdio', '-g', 'none', '--percent-limit', '0'], { stdio: ['ignore', 'pipe', 'ignore'] });
      p.stdout.on('data', (d: Buffer) => { text += d; });
      p.once('exit', () => r(text));
    });
    let all = 0;
    for (const line of report.split('\n')) {
      const f = /^\s+[\d.]+%\s+(\d+)\s+\[[.k]\]\s+(.*)$/.exec(line);
      if (!f) continue;
      const us = Number(f[1]) / HZ / m.messages * 1e6;
      const name = f[2]!.trim().replace(/^JS:[*+^~']*/, 'JS ').replace(/file:\/\/\/\S*\/(engine|test|node_modules)\//, '$1/').slice(0, 80);
      calls.set(name, (calls.get(name) ?? 0) + us);
      all += us;
    }
    calls.set('(all)', all);
    rows.push([rate, calls]);
    s.stop();
    continue;
  }
  for (const line of (await readFile(out, 'utf8')).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 5 && /^\d/.test(f[0]!) && f[f.length - 1] !== 'total') calls.set(f[f.length - 1]!, Number(f[3]) / m.messages);
  }
  if (redisTracer) {
    for (const line of (await readFile(redisOut, 'utf8')).split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f.length >= 5 && /^\d/.test(f[0]!) && f[f.length - 1] !== 'total') calls.set(`redis ${f[f.length - 1]!}`, Number(f[3]) / m.messages);
    }
  }
  rows.push([rate, calls]);
  s.stop();
}
const diff = (n: string): number => Math.max(...rows.map(([, c]) => Math.abs((c.get(n) ?? 0) - (rows[0]![1].get(n) ?? 0))));
const names = [...new Set(rows.flatMap(([, c]) => [...c.keys()]))]
  .sort(perf ? (a, b) => diff(b) - diff(a) : (a, b) => (rows.at(-1)![1].get(b) ?? 0) - (rows.at(-1)![1].get(a) ?? 0))
  .slice(0, perf ? Number(process.env.PERF_TOP ?? 40) : undefined);
console.log(perf ? `server CPU µs per message by symbol (self, perf cpu-clock), ${messages} messages, 100 per connection` : `system calls per message (server, all threads), ${messages} messages, 100 per connection`);
const width = perf ? 82 : 18;
console.log((perf ? 'symbol' : 'call').padEnd(width) + targets.map((t) => t.padStart(11)).join(''));
for (const n of names) console.log(n.padEnd(width) + rows.map(([, c]) => (c.get(n) ?? 0).toFixed(2).padStart(11)).join(''));
await redis?.stop();
await rm(work, { recursive: true, force: true });
process.exit(0);
