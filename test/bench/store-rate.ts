/**
 * `npm run bench:store`: what a rate() per message costs benchmark (a) (a script on every context), with
 * connection reuse: (a) as is, (a) whose mailfrom script is made async (no store call), awaits rate() on the
 * memory store, on the memory store answering by promise like Redis but without I/O (the share of Redis's
 * cost that is the isolate re-entry), and on a Redis store (a redis-server started here on a free port), over
 * loopback TCP and over its Unix socket; then (a) under `postern serve` (workers: 1), where the memory store is the supervisor's, plain, with a memory
 * and with a Redis rate() (BENCH_SERVE=0 leaves these out). Each row's ratios are the medians of each round's
 * paired ratios to its base ((a), or (a) under serve), with their ranges. Targets: memory ≥ 0.95, Redis ≥ 0.85
 * of the base's rate.
 *
 * Method: every server is a process of its own, so a row also differs from its base by what two processes
 * running the same work differ by; the A/A row, (a) again (BENCH_CONTROL=0 leaves it out), shows that spread in
 * each run: a row within it is not told apart from its base. Every target is warmed up (BENCH_WARM messages,
 * default 2000) after all have started, and each round starts one target further on, alternating direction,
 * so that no target always runs first, last or after the same neighbour. The server CPU per message counts every
 * process of the server; redis-server's own CPU is given apart, and with the server's against the base: on one
 * machine the user pays both.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki } from '../helpers/pki.ts';
import { startRedis } from '../helpers/redis-server.ts';
import { ASYNC_MAILFROM, BENCH_SCRIPTS, RATE_MAILFROM, benchConfig, benchPort, writeBenchFolder } from './bench-config.ts';
import { cpuSeconds, load, measure, median, startServer } from './measure.ts';

const pki = await makeTestPki();
const work = await mkdtemp(join(tmpdir(), 'postern-bench-store-'));
const redis = await startRedis();


async function config(name: string, mailfrom: string | null, store: string, deferredStore = false): Promise<{ configText: string; baseDir: string; port: number; deferredStore: boolean }> {
  const dir = join(work, name);
  await writeBenchFolder(dir, mailfrom ? { ...BENCH_SCRIPTS, 'mailfrom.ts': mailfrom } : BENCH_SCRIPTS);
  const port = benchPort();
  return { port, baseDir: dir, configText: benchConfig(dir, port, pki) + LIMITS + store, deferredStore };
}


// Time limits raised for every target alike (the script's from 100 ms to 2 s, the Redis store's from 50 ms to 1 s): on a loaded shared
// machine a call and its round trip can take longer, and this benchmark measures cost, not what a timeout does (test/store covers that).
const LIMITS = 'sandbox: { timeoutMs: 2000 }\n';
const control = process.env.BENCH_CONTROL !== '0';
const serve = process.env.BENCH_SERVE !== '0';
const REDIS_STORE = `store: { redis: { url: "${redis.url}", keyPrefix: "bench:", timeoutMs: 1000 } }\n`;
const REDIS_UNIX_STORE = `store: { redis: { url: "${redis.unixUrl}", keyPrefix: "bench:", timeoutMs: 1000 } }\n`;
interface Target { name: string; config: () => ReturnType<typeof config>; server?: string; workers?: number; redis?: boolean }
const targets: Target[] = [
  { name: '(a)', config: () => config('a', null, '') },
  // A/A control: (a) again in a server process of its own. What separate processes differ by with the same
  // work (start order, JIT, heap layout) shows here, and bounds what the other rows can be trusted to.
  ...(control ? [{ name: '(a) again (A/A control)', config: () => config('a2', null, '') }] : []),
  { name: '(a), mailfrom async, no rate()', config: () => config('async', ASYNC_MAILFROM, '') },
  { name: '(a) + rate() memory', config: () => config('mem', RATE_MAILFROM, '') },
  // The memory store answering by promise, as Redis does, but without I/O: the cost of delivering the answer into the isolate later.
  { name: '(a) + rate() memory, answered later', config: () => config('deferred', RATE_MAILFROM, '', true) },
  { name: '(a) + rate() redis', config: () => config('redis', RATE_MAILFROM, REDIS_STORE), redis: true },
  // The same redis-server over its Unix socket: the recommended layout when it runs on the same host.
  { name: '(a) + rate() redis, unix socket', config: () => config('redis-unix', RATE_MAILFROM, REDIS_UNIX_STORE), redis: true },
];
/**
 * `postern serve` (the way Postern runs by default) keeps the memory store in the supervisor: a worker's rate()
 * is a message to it and back (engine/cluster/shared-store.ts), not the single process's answer at once. These
 * rows compare with (a) under serve, `workers: 1` (BENCH_SERVE=0 leaves them out).
 */
const SERVE_BASE = targets.length;
if (serve) {
  targets.push(
    { name: '(a) serve, workers: 1', config: () => config('serve-a', null, ''), server: 'postern-serve.ts', workers: 1 },
    { name: '(a) serve, workers: 1 + rate() memory', config: () => config('serve-mem', RATE_MAILFROM, ''), server: 'postern-serve.ts', workers: 1 },
    { name: '(a) serve, workers: 1 + rate() redis', config: () => config('serve-redis', RATE_MAILFROM, REDIS_STORE), server: 'postern-serve.ts', workers: 1, redis: true },
  );
}
/** The target each row is compared with: (a), or (a) under serve. */
const baseOf = (i: number): number => (serve && i >= SERVE_BASE ? SERVE_BASE : 0);
const messages = Number(process.env.BENCH_REUSE ?? 4000);
const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
/** Warm-up messages per target before anything counts (JIT tiers, isolates, heap growth), as bench:ab. */
const warm = Number(process.env.BENCH_WARM ?? 2000);
const servers: Array<{ port: number; pid: number; stop: () => void }> = [];
// Servers are stopped however the run ends (a failed load would leave them running otherwise).
process.on('exit', () => { for (const s of servers) s.stop(); if (redis.pid) process.kill(redis.pid, 'SIGKILL'); });
for (const t of targets) {
  const c = await t.config();
  const s = { port: c.port, ...await startServer(t.server ?? 'postern-server.ts', { ...c, workers: t.workers ?? 0 }) };
  // Warm-up; the Redis store connects in the background after the server is up, and refuses until then.
  for (let attempt = 1; ; attempt++) {
    try {
      await load(pki, s.port, 10, 200, true);
      break;
    } catch (err) {
      if (attempt === 5) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  servers.push(s);
}
// Warmed after all have started, each alike: the first-started server would otherwise also be the longest running.
for (const s of servers) await load(pki, s.port, 100, warm, true);
const rates = targets.map(() => [] as number[]);
/** redis-server's own CPU per message (µs) while the Redis target runs: on a small machine it competes with Postern. */
const redisCpu = targets.map(() => [] as number[]);
const cpu = targets.map(() => [] as number[]);
/** The load client's CPU per message (µs): on this small machine it shares the cores with the server and Redis. */
const client = targets.map(() => [] as number[]);
/** Median latency of a message (MAIL FROM to the 250 after DATA), ms: an awaited answer costs turns of the event loop too. */
const p50 = targets.map(() => [] as number[]);
const ratios = targets.map(() => [] as number[]);
/** Each round's server CPU per message over (a)'s: on a machine shared with other work, steadier than the rate. */
const cpuRatios = targets.map(() => [] as number[]);
/** The whole machine's busy CPU per message (µs; server, load client, redis-server, kernel, and other work). */
const machine = targets.map(() => [] as number[]);
/** Server CPU plus redis-server's per message over (a)'s server CPU: what a user pays when Redis runs on the same machine. */
const withRedisRatios = targets.map(() => [] as number[]);
try {
  for (let round = 0; round < rounds; round++) {
    // Each round starts one target further on and runs the other way round every second round: over the
    // rounds every target is measured in every position and after every other (what ran just before, e.g.
    // Redis work or a garbage collection, and the load's drift within a round, fall on all alike).
    const order = [...targets.keys()].map((_, k) => (k + Math.floor(round / 2)) % targets.length);
    if (round % 2 === 1) order.reverse();
    const got: number[] = [];
    for (const i of order) {
      const redis0 = targets[i]!.redis ? await cpuSeconds(redis.pid!) : 0;
      const m = await measure(pki, servers[i]!, 100, messages, true);
      if (targets[i]!.redis) redisCpu[i]!.push((await cpuSeconds(redis.pid!) - redis0) / m.messages * 1e6);
      machine[i]!.push(m.machineUs);
      rates[i]!.push(m.rate);
      cpu[i]!.push(m.cpuUs);
      client[i]!.push(m.clientCpuUs);
      p50[i]!.push(m.p50);
      got[i] = m.rate;
    }
    for (const i of targets.keys()) {
      const b = baseOf(i);
      ratios[i]!.push(got[i]! / got[b]!);
      cpuRatios[i]!.push(cpu[i]!.at(-1)! / cpu[b]!.at(-1)!);
      if (targets[i]!.redis) withRedisRatios[i]!.push((cpu[i]!.at(-1)! + redisCpu[i]!.at(-1)!) / cpu[b]!.at(-1)!);
    }
  }
  console.log(`reuse (100/conn), ${messages} messages, ${rounds} rounds, ${warm} warm-up messages each; medians`);
  console.log('target\tmsg/s\tserver CPU µs/msg\tclient CPU µs/msg\tmachine µs/msg\tp50 ms\tserver CPU / base (range)\trate / base (range)\t(base: (a), or (a) serve for serve rows)');
  const range = (xs: number[]): string => `${median(xs).toFixed(3)} (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})`;
  for (const [i, t] of targets.entries()) {
    console.log(`${t.name}\t${median(rates[i]!).toFixed(0)}\t${median(cpu[i]!).toFixed(0)}\t${median(client[i]!).toFixed(0)}\t${median(machine[i]!).toFixed(0)}\t${median(p50[i]!).toFixed(2)}\t${range(cpuRatios[i]!)}\t${range(ratios[i]!)}`);
  }
  for (const [i, t] of targets.entries()) {
    if (t.redis) console.log(`${t.name}: redis-server itself ${median(redisCpu[i]!).toFixed(0)} µs CPU per message (not in the server CPU above); server + redis-server CPU / base: ${range(withRedisRatios[i]!)}`);
  }
} finally {
  for (const s of servers) s.stop();
  // The workers of a served target end once they see their supervisor gone: Redis stays up until then (else they log it as an outage).
  await new Promise((r) => setTimeout(r, 1000));
  await redis.stop();
  await rm(work, { recursive: true, force: true });
}
