/**
 * `npm run bench:policy [-- <treeA> <treeB>]`: Postfix policy requests per second and the latency per
 * request, from a load generator speaking the policy protocol (20 connections, RCPT requests with
 * certificate attributes; test/bench/policy-load.ts), for
 *   (s) a policy service with an rcptto script (a fingerprint-table lookup, as in examples/postfix-policy-service);
 *   (b) the same service without scripts (protocol, mapping and answer only: the baseline; one tree only);
 * each in its own process, at each offered load of POLICY_RATES (requests/s; 0 = closed loop at
 * saturation, where latency ≈ 20 / throughput by Little's law; default "0,10000,20000"), in rounds that
 * alternate the servers' order. With two source trees (each with node_modules), both serve (s) with their
 * own engine: before/after a change, measured in the same minutes. ROUNDS, REQUESTS set the length.
 * POLICY_DIAG=1 adds each server's GC pauses and event-loop delay (a timer per millisecond: not for
 * comparing speed); POLICY_FAST_PATH_MS sets the servers' sandbox.fastPathMs; POLICY_NODE_ARGS gives the
 * servers Node options (--trace-gc), POLICY_NODE_ARGS_A / _B one of two trees (the same tree twice compares
 * options). Reports medians over rounds, with the machine's load average and idle share.
 */
import { mkdtemp, mkdir, readFile, writeFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { fork } from 'node:child_process';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { cpuSeconds, machineTicks, median, startServer } from './measure.ts';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const REQUESTS = Number(process.env.REQUESTS ?? 60_000);
const RATES = (process.env.POLICY_RATES ?? '0,10000,20000').split(',').map(Number);
const DIAG = process.env.POLICY_DIAG === '1';
/** sandbox.fastPathMs for every server (default 5): a larger budget keeps a loaded machine's stalls from moving the hook to isolate threads. */
const FAST_PATH_MS = process.env.POLICY_FAST_PATH_MS;
const WARMUP = 5000;
const here = resolve(import.meta.dirname, '../..');
const trees = process.argv.slice(2).filter((a) => a !== '--').slice(0, 2).map((t) => resolve(t));
if (trees.length === 1 || trees.some((t) => !existsSync(join(t, 'engine/policy-service')))) {
  console.error('usage: npm run bench:policy [-- <treeA> <treeB>]   (each a Postern source tree with a policy service and node_modules)');
  process.exit(2);
}
const work = await mkdtemp(join(tmpdir(), 'postern-bench-policy-'));
const fingerprints = Array.from({ length: 200 }, (_, i) => Buffer.alloc(32, i).toString('hex').toUpperCase().match(/../g)!.join(':'));

const SCRIPT = `
import type { RcptToContext, Verdict } from 'postern';
export default function rcptto(ctx: RcptToContext): Verdict | void {
  if (ctx.builtin.accepted) return;
  const cert = ctx.connection.clientCertificate;
  if (cert && lookup('relay_certs', cert.fingerprint.sha256) !== null) return accept();
  return reject('Relay access denied: client certificate not listed', { code: 554, enhanced: '5.7.1' });
}`;

interface Server { name: string; port: number; pid: number; stop: () => void; diag: () => Promise<Diag> }
interface Diag { gcCount: number; gcTotalMs: number; gcMaxMs: number; loopP99Ms: number; loopMaxMs: number; perBatch: number; overruns: number }

async function server(name: string, root: string, withScript: boolean, nodeArgs = process.env.POLICY_NODE_ARGS): Promise<Server> {
  const dir = join(work, name.replace(/\W+/g, '_'));
  await mkdir(join(dir, 'scripts'), { recursive: true });
  if (withScript) await writeFile(join(dir, 'scripts', 'rcptto.ts'), SCRIPT);
  // Half the fingerprints are listed: accepts and rejects alternate.
  await writeFile(join(dir, 'relay_certs'), fingerprints.filter((_, i) => i % 2 === 0).map((f) => `${f} device`).join('\n') + '\n');
  const configText = `
dataDir: ${dir}/data
scripts: ${dir}/scripts
localDomains: [example.org]
tables: { relay_certs: ${dir}/relay_certs }
log: { level: warn }${FAST_PATH_MS ? `\nsandbox: { fastPathMs: ${FAST_PATH_MS} }` : ''}
policyServices: [{ name: bench, listen: '127.0.0.1:0', authoritative: true }]
`;
  const started = await startServer('policy-bench-server.ts', { configText, baseDir: dir, root, diag: DIAG }, false,
    nodeArgs?.split(' ').filter(Boolean));
  const port = Number(await readFile(join(dir, 'port'), 'utf8'));
  const diag = (): Promise<Diag> => new Promise((r) => { started.child.once('message', (m) => r(m as Diag)); started.child.send('diag'); });
  return { name, port, ...started, diag };
}

interface Result {
  rate: number; p50: number; p99: number; p999: number; max: number; requests: number; clientCpuUs: number; lagP99: number;
  serverCpuUs: number; idle: number; diag: Diag;
}

async function load(s: Server, rate: number): Promise<Result> {
  const [cpu0, machine0] = [await cpuSeconds(s.pid), await machineTicks()];
  const child = fork(join(import.meta.dirname, 'policy-load.ts'), [JSON.stringify({ port: s.port, concurrency: 20, requests: REQUESTS, warmup: WARMUP, fingerprints, rate })],
    { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; });
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  if (code !== 0) throw new Error(`load generator failed (${code})`);
  const [cpu1, machine1] = [await cpuSeconds(s.pid), await machineTicks()];
  const r = JSON.parse(out) as Omit<Result, 'serverCpuUs' | 'idle'>;
  const ticks = Math.max(1, machine1.total - machine0.total);
  return {
    ...r, serverCpuUs: (cpu1 - cpu0) * 1e6 / (REQUESTS + WARMUP), idle: (machine1.idle - machine0.idle) / ticks,
    diag: await s.diag(),
  };
}

const servers: Server[] = [];
if (trees.length === 2) {
  for (const [i, tree] of trees.entries()) {
    const ab = i === 0 ? 'A' : 'B';
    const nodeArgs = process.env[`POLICY_NODE_ARGS_${ab}`] ?? process.env.POLICY_NODE_ARGS;
    servers.push(await server(`${ab} (s) ${tree}${nodeArgs ? ` ${nodeArgs}` : ''}`, tree, true, nodeArgs));
  }
} else {
  servers.push(await server('(s) rcptto script + table lookup', here, true));
  servers.push(await server('(b) no script (baseline)', here, false));
}
const results = new Map<string, Result[]>();
const load0 = loadavg();
try {
  for (const s of servers) await load(s, 0); // warm-up: JIT, isolates (the diag counters restart after it)
  for (let round = 0; round < ROUNDS; round++) {
    for (const rate of RATES) {
      const order = round % 2 ? [...servers].reverse() : servers;
      for (const s of order) {
        const key = `${s.name}\n${rate}`;
        results.set(key, [...results.get(key) ?? [], await load(s, rate)]);
      }
    }
  }
} finally {
  for (const s of servers) s.stop();
  await rm(work, { recursive: true, force: true });
}
const f = (n: number, d = 2): string => n.toFixed(d);
console.log(`policy service, 20 connections, ${REQUESTS} RCPT requests per run (after ${WARMUP} unmeasured), ${ROUNDS} rounds (medians); latency in ms`);
if (FAST_PATH_MS) console.log(`sandbox.fastPathMs: ${FAST_PATH_MS}`);
console.log(`load average ${load0.map((l) => l.toFixed(2)).join(' ')} at start, ${loadavg().map((l) => l.toFixed(2)).join(' ')} at end`);
for (const [i, s] of servers.entries()) console.log(`${trees.length === 2 ? '' : `${i + 1}: `}${s.name}`);
for (const rate of RATES) {
  console.log(`\noffered: ${rate ? `${rate} req/s (open loop)` : 'closed loop (saturation)'}`);
  for (const s of servers) {
    const rs = results.get(`${s.name}\n${rate}`)!;
    const m = (g: (r: Result) => number): number => median(rs.map(g));
    const sum = (g: (r: Result) => number): number => rs.reduce((n, r) => n + g(r), 0);
    const d = (DIAG ? `   gc ${f(m((r) => r.diag.gcCount), 0)}× ${f(m((r) => r.diag.gcTotalMs), 0)} ms (max ${f(m((r) => r.diag.gcMaxMs))})` +
      `   loop delay p99 ${f(m((r) => r.diag.loopP99Ms))} max ${f(m((r) => r.diag.loopMaxMs))}` : '') +
      `   calls/entry ${f(m((r) => r.diag.perBatch), 1)} (0: on isolate threads)   fast-path overruns ${sum((r) => r.diag.overruns)}`;
    console.log(`  ${s.name.split(' ')[0]!.padEnd(4)} ${f(m((r) => r.rate), 0).padStart(6)} req/s   p50 ${f(m((r) => r.p50))}   p99 ${f(m((r) => r.p99))}   p999 ${f(m((r) => r.p999))}` +
      `   max ${f(m((r) => r.max), 1)}   server ${f(m((r) => r.serverCpuUs), 1)} µs/req   client ${f(m((r) => r.clientCpuUs), 1)} µs/req` +
      `   generator lag p99 ${f(m((r) => r.lagP99))}   idle ${f(m((r) => r.idle) * 100, 0)}%${d}`);
  }
}
