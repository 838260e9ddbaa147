/**
 * `npm run bench:ab -- <treeA> <treeB> [<treeC>…]`: benchmark (a) (or (b) with AB_SCRIPTS=0) served by two source trees
 * side by side — e.g. a `git worktree` of main and your change — with load rounds interleaved A, B, A, B…
 * On a shared VM one run's rate drifts ±20% with the host; two servers measured in the same minutes drift
 * alike, so the paired B/A ratios of a round are what judges a change. Both trees get this tree's
 * configuration, scripts and PKI: only the engine differs. AB_ROUNDS (default 6) and AB_MESSAGES (4000,
 * 100 per connection; AB_PER_CONN=1: one per connection, what a connection costs) set the size; AB_NODE_ARGS_A / AB_NODE_ARGS_B add Node options to one server (e.g. a V8 flag);
 * AB_WORKERS=N runs both as `postern serve` with N worker processes (server CPU: the whole process tree);
 * AB_RATE=redis (or memory) adds an `await rate()` to the mailfrom script, with a Redis store (one
 * redis-server started here, a key prefix per tree) or the memory store: what a store change costs;
 * AB_RATE_A, AB_RATE_B, … give one tree its own (none, async — mailfrom made async without a store call —, memory
 * or redis): the same tree twice then shows what an async hook or a rate() adds (`AB_RATE_A=none AB_RATE_B=async … . .`);
 * AB_REDIS_A, AB_REDIS_B, … = unix give one tree the Redis store over redis-server's Unix socket instead of loopback TCP
 * (`AB_RATE=redis AB_REDIS_B=unix … . .`: what the socket saves, same code on both sides);
 * AB_CONFIG_EXTRA is YAML appended to every configuration (e.g. `sandbox: { fastPathMs: 50 }`).
 * More than two trees (e.g. commits along a history, to find where a cost came in): each is measured in every
 * round and compared with A like B is.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeTestPki } from '../helpers/pki.ts';
import { startRedis } from '../helpers/redis-server.ts';
import { ASYNC_MAILFROM, BENCH_SCRIPTS, RATE_MAILFROM, benchConfig, benchPort, writeBenchFolder } from './bench-config.ts';
import { load, measure, median, startServer, threadsNs, type Measured } from './measure.ts';

const trees = process.argv.slice(2).map((t) => resolve(t));
if (trees.length < 2 || trees.some((t) => !existsSync(join(t, 'test/bench/postern-server.ts')))) {
  console.error('usage: npm run bench:ab -- <treeA> <treeB> [<treeC>…]   (each a Postern source tree with node_modules)');
  process.exit(2);
}
const rounds = Number(process.env.AB_ROUNDS ?? 6);
const messages = Number(process.env.AB_MESSAGES ?? 4000);
const perConnection = Number(process.env.AB_PER_CONN ?? 100);
const withScripts = process.env.AB_SCRIPTS !== '0';
const workers = process.env.AB_WORKERS ? Number(process.env.AB_WORKERS) : 0;
const withRate = process.env.AB_RATE;
if (withRate && withRate !== 'redis' && withRate !== 'memory') throw new Error('AB_RATE: redis or memory');
const names = trees.map((_, i) => String.fromCharCode(65 + i));
const rateOf = (name: string): string => process.env[`AB_RATE_${name}`] ?? withRate ?? 'none';
for (const n of names) if (!['none', 'async', 'memory', 'redis'].includes(rateOf(n))) throw new Error(`AB_RATE_${n}: none, async, memory or redis`);
const redis = names.some((n) => rateOf(n) === 'redis') ? await startRedis() : null;

const pki = await makeTestPki();
const work = await mkdtemp(join(tmpdir(), 'postern-ab-'));
const servers: Array<{ name: string; port: number; pid: number; stop: () => void }> = [];
// Servers (and Redis) are stopped however the run ends (a failed load would leave them running otherwise).
process.on('exit', () => { for (const s of servers) s.stop(); if (redis?.pid) process.kill(redis.pid, 'SIGKILL'); });
for (const [i, tree] of trees.entries()) {
  const dir = join(work, String(i));
  const rate = rateOf(names[i]!);
  const mailfrom = rate === 'none' ? null : rate === 'async' ? ASYNC_MAILFROM : RATE_MAILFROM;
  await writeBenchFolder(dir, !withScripts ? {} : mailfrom ? { ...BENCH_SCRIPTS, 'mailfrom.ts': mailfrom } : BENCH_SCRIPTS);
  const port = benchPort();
  const nodeArgs = process.env[`AB_NODE_ARGS_${names[i]}`]?.split(' ').filter(Boolean);
  // AB_WORKERS=N: each tree runs as `postern serve` with N workers (trees that have test/bench/postern-serve.ts).
  const server = workers ? join(tree, 'test/bench/postern-serve.ts') : join(tree, 'test/bench/postern-server.ts');
  // With rate(): time limits raised (script 2 s, Redis 1 s) so a loaded machine measures cost, not timeouts.
  const redisUrl = process.env[`AB_REDIS_${names[i]}`] === 'unix' ? redis?.unixUrl : redis?.url;
  const store = (mailfrom ? 'sandbox: { timeoutMs: 2000 }\n' : '') + (rate === 'redis' ? `store: { redis: { url: "${redisUrl}", keyPrefix: "ab${i}:", timeoutMs: 1000 } }\n` : '');
  const extra = process.env.AB_CONFIG_EXTRA ? `${process.env.AB_CONFIG_EXTRA}\n` : '';
  const started = await startServer(server, { configText: benchConfig(dir, port, pki) + store + extra, baseDir: dir, workers }, false, nodeArgs);
  servers.push({ ...started, port, name: names[i]! });
}
// Warm both (JIT, isolates) before anything counts; a Redis store connects in the background, refusing until then.
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

const show = (name: string, m: Measured): string =>
  `${name} ${m.rate.toFixed(0).padStart(5)} msg/s  p50 ${m.p50.toFixed(1).padStart(5)} ms  event loop ${m.mainUs.toFixed(0).padStart(4)} µs/msg (${(m.mainBusy * 100).toFixed(0)}% busy)` +
  `  server ${m.cpuUs.toFixed(0).padStart(4)} µs/msg  machine ${m.machineUs.toFixed(0).padStart(5)} µs/msg  idle ${(m.idle * 100).toFixed(0).padStart(2)}%  steal ${(m.steal * 100).toFixed(0).padStart(2)}%`;
const ratios = names.slice(1).map(() => ({ rate: [] as number[], mainUs: [] as number[], cpuUs: [] as number[], withRedis: [] as number[], redis: [] as number[] }));
/** redis-server's own CPU per message (µs, all its threads) while each tree ran: on one machine the user pays it too. */
const redisUs = new Map<string, number>();
const usesRedis = (name: string): boolean => rateOf(name) === 'redis';
console.log(`${trees.map((t, i) => `${names[i]} = ${t} ${process.env[`AB_NODE_ARGS_${names[i]}`] ?? ''}`).join('\n')}\n${withScripts ? 'scripts on every context' : 'no scripts'}${names.map((n) => `, ${n}: ${rateOf(n)}${rateOf(n) === 'redis' && process.env[`AB_REDIS_${n}`] === 'unix' ? ' (unix socket)' : ''}`).join('')}, ${messages} messages per round, ${perConnection} per connection\n`);
for (let round = 0; round < rounds; round++) {
  // Alternate who goes first, so neither always follows the other's leftovers (page cache, timers).
  const order = round % 2 === 0 ? servers : [...servers].reverse();
  const got = new Map<string, Measured>();
  for (const s of order) {
    const r0 = redis?.pid ? await threadsNs(redis.pid) : 0;
    const m = await measure(pki, s, perConnection, messages, true);
    if (redis?.pid) redisUs.set(s.name, (await threadsNs(redis.pid) - r0) / m.messages / 1000);
    got.set(s.name, m);
  }
  const a = got.get('A')!;
  const withRedis = (name: string, m: Measured): number => m.cpuUs + (usesRedis(name) ? redisUs.get(name)! : 0);
  const redisNote = (name: string): string => (usesRedis(name) ? `  redis-server ${redisUs.get(name)!.toFixed(1)} µs/msg` : '');
  console.log(show('A', a) + redisNote('A'));
  for (const [i, name] of names.slice(1).entries()) {
    const b = got.get(name)!;
    console.log(show(name, b) + redisNote(name));
    ratios[i]!.withRedis.push(withRedis(name, b) / withRedis('A', a));
    if (usesRedis(name) && usesRedis('A')) ratios[i]!.redis.push(redisUs.get(name)! / redisUs.get('A')!);
    ratios[i]!.rate.push(b.rate / a.rate);
    ratios[i]!.mainUs.push(b.mainUs / a.mainUs);
    ratios[i]!.cpuUs.push(b.cpuUs / a.cpuUs);
    console.log(`  ${name}/A: rate ${(b.rate / a.rate).toFixed(3)}  event loop µs/msg ${(b.mainUs / a.mainUs).toFixed(3)}  server µs/msg ${(b.cpuUs / a.cpuUs).toFixed(3)}`);
  }
}
for (const s of servers) s.stop();
await redis?.stop();
await rm(work, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 }); // serve's children may still be ending
const fmt = (xs: number[]): string => `median ${median(xs).toFixed(3)} (${Math.min(...xs).toFixed(3)}–${Math.max(...xs).toFixed(3)})`;
for (const [i, name] of names.slice(1).entries()) {
  const r = ratios[i]!;
  console.log(`${i === 0 ? '\n' : ''}${name}/A over ${rounds} rounds: rate ${fmt(r.rate)}; event loop µs/msg ${fmt(r.mainUs)}; server µs/msg ${fmt(r.cpuUs)}${redis ? `; server + redis-server µs/msg ${fmt(r.withRedis)}` : ''}${r.redis.length ? `; redis-server µs/msg ${fmt(r.redis)}` : ''}`);
}
