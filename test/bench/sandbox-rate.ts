/**
 * Micro-benchmark: what an awaited rate() costs a call through the sandbox alone (no SMTP), by the
 * load-independent figures first: isolate entries per call (on the event-loop thread and on isolate threads),
 * then CPU per call (the whole process, all threads; and the event-loop thread alone). Targets, as in
 * bench:store: a plain mailfrom call (a table lookup), the same made async (`await null`), with `await rate()`
 * on the memory store (answers at once), on the memory store answering by promise (as a remote store does,
 * without I/O) and on Redis (a redis-server started here on a free loopback port), over TCP and over its Unix
 * socket (redis-unix; redis-server's own CPU per call is printed for both). BATCH calls are made at
 * once (default 10: connections whose commands arrive in one turn), CALLS per round (20 000), ROUNDS (4),
 * rounds interleaving the targets; CPU is the median of the rounds. TARGETS (e.g. `plain,memory`: plain, async,
 * memory, later, redis, redis-unix) runs only those, for a profile of one (`perf record -g node --perf-basic-prof …`).
 *
 *   node test/bench/sandbox-rate.ts
 */
import { Sandbox } from '../../engine/sandbox/index.ts';
import * as isolateSlot from '../../engine/sandbox/isolate-slot.ts';
import { MemoryCounterStore, type CounterStore } from '../../engine/store/index.ts';
import { RedisCounterStore } from '../../engine/store/redis-store.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { startRedis } from '../helpers/redis-server.ts';
import { authContext, js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { median, threadsNs } from './measure.ts';

const BATCH = Number(process.env.BATCH ?? 10);
/** MIXED=1: the isolate also runs an rcptto script (sync), and every other call of a batch is one, as in a server. */
const MIXED = process.env.MIXED === '1';
const RCPTTO = `export default function (ctx) { if (!ctx.builtin.accepted) return reject('relay'); }`;
const CALLS = Number(process.env.CALLS ?? 20_000);
const ROUNDS = Number(process.env.ROUNDS ?? 4);

const LOOKUP = `if (lookup('senders', ctx.address.domain) === 'blocked') return reject('blocked');`;
const SCRIPTS = {
  plain: `export default function (ctx) { ${LOOKUP} }`,
  async: `export default async function (ctx) { ${LOOKUP} await null; }`,
  rate: `export default async function (ctx) { ${LOOKUP}
    const r = await rate('from:' + ctx.address.address, 1000000000, 3600);
    if (!r.allowed) return defer('slow down'); }`,
};

/** The memory store answering by promise, as a remote store does (see test/bench/postern-server.ts). */
function deferred(m: MemoryCounterStore): CounterStore {
  return { kind: 'memory', rate: (k, l, w) => m.rate(k, l, w), get: (k) => m.get(k), add: (k, n, t) => m.add(k, n, t), authFailures: () => m.authFailures(), close: () => m.close() };
}

const only = process.env.TARGETS?.split(',');
const redis = await startRedis();
const redisStore = new RedisCounterStore({ url: redis.url, keyPrefix: 'bench:', timeoutMs: 1000 }, createLogger('warn'));
const redisUnixStore = new RedisCounterStore({ url: redis.unixUrl, keyPrefix: 'bench:', timeoutMs: 1000 }, createLogger('warn'));
const memory = new MemoryCounterStore();
const targets: Array<{ name: string; script: string; store?: CounterStore }> = [
  { id: 'plain', name: 'plain mailfrom', script: SCRIPTS.plain },
  { id: 'async', name: 'async, no rate()', script: SCRIPTS.async },
  { id: 'memory', name: 'rate() memory', script: SCRIPTS.rate, store: memory },
  { id: 'later', name: 'rate() memory, answered later', script: SCRIPTS.rate, store: deferred(memory) },
  { id: 'redis', name: 'rate() redis', script: SCRIPTS.rate, store: redisStore },
  { id: 'redis-unix', name: 'rate() redis, unix socket', script: SCRIPTS.rate, store: redisUnixStore },
].filter((t) => !only || only.includes(t.id));
const sandboxes = await Promise.all(targets.map((t) => Sandbox.create({
  host: { ...recordingHost({ senders: {} }), store: t.store }, scripts: MIXED ? [js('mailfrom', t.script), js('rcptto', RCPTTO)] : [js('mailfrom', t.script)], timeoutMs: 2000,
})));

const connection = authContext().connection;
const ctx = (i: number): object => ({
  connection, transaction: { id: 'x', sender: null, recipients: [] },
  address: { address: `a${i % 50}@b.c`, localPart: 'a', domain: 'b.c', params: {} },
  builtin: { accepted: true },
});
const cpuMicros = (u: NodeJS.CpuUsage): number => u.user + u.system;
// Counted since the entries counter exists; a tree from before it (run for a comparison) shows NaN.
const slotEntries = (isolateSlot as { slotEntries?: { eventLoop: number; isolateThread: number } }).slotEntries ?? { eventLoop: NaN, isolateThread: NaN };

async function round(sandbox: Sandbox, n: number): Promise<{ cpu: number; thread: number; loop: number; thread2: number; redis: number }> {
  const r0 = await threadsNs(redis.pid!);
  const e0 = { ...slotEntries };
  const c0 = process.cpuUsage();
  const t0 = process.threadCpuUsage();
  for (let i = 0; i < n; i += BATCH) {
    await Promise.all(Array.from({ length: BATCH }, (_, j) => sandbox.invoke(MIXED && j % 2 ? 'rcptto' : 'mailfrom', ctx(i + j), `c${j}`, `k${j}`)));
  }
  return {
    cpu: cpuMicros(process.cpuUsage(c0)) / n,
    thread: cpuMicros(process.threadCpuUsage(t0)) / n,
    loop: (slotEntries.eventLoop - e0.eventLoop) / n,
    thread2: (slotEntries.isolateThread - e0.isolateThread) / n,
    redis: (await threadsNs(redis.pid!) - r0) / n / 1000,
  };
}

// Warm-up (Redis connects in the background: its first calls may fail).
for (const s of sandboxes) for (let i = 0; i < 5; i++) await round(s, 1000).catch(() => undefined);
const results = targets.map(() => [] as Array<Awaited<ReturnType<typeof round>>>);
for (let r = 0; r < ROUNDS; r++) {
  const order = [...targets.keys()];
  if (r % 2) order.reverse();
  for (const i of order) results[i]!.push(await round(sandboxes[i]!, CALLS));
}
console.log(`${CALLS} calls per round, ${BATCH} at once, ${ROUNDS} rounds; medians`);
console.log('target'.padEnd(32), 'entries/call (loop, threads)', 'CPU µs/call (process, loop thread)', 'redis-server µs/call');
for (const [i, t] of targets.entries()) {
  const m = (f: (x: Awaited<ReturnType<typeof round>>) => number): number => median(results[i]!.map(f));
  console.log(t.name.padEnd(32), `${m((x) => x.loop).toFixed(2)}  ${m((x) => x.thread2).toFixed(2)}`.padEnd(28), `${m((x) => x.cpu).toFixed(1)}  ${m((x) => x.thread).toFixed(1)}`.padEnd(34), t.store === redisStore || t.store === redisUnixStore ? m((x) => x.redis).toFixed(1) : '');
}
for (const [i, s] of sandboxes.entries()) {
  const st = await s.stats();
  if (st.failures.error + st.failures.timeout + st.failures.memory) console.log(targets[i]!.name, 'failures', st.failures);
  console.log(targets[i]!.name, 'fast path', JSON.stringify(st.fastPath));
}
await Promise.all(sandboxes.map((s) => s.dispose()));
await redisStore.close();
await redisUnixStore.close();
await redis.stop();
process.exit(0);
