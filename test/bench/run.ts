/**
 * `npm run bench`: messages/s and p50/p99 per message over loopback, in one run, for
 *   (a) Postern, a script on every context, durable spool;  (b) Postern without scripts;
 *   (c) bare smtp-server accepting and discarding;  (h) Haraka accepting and discarding (installed on first use);
 * each with STARTTLS + a client certificate, with connection reuse and with one message per connection.
 * Server and load generator run in separate processes. Ratios against (c) and (h) are printed at the end.
 */
import { fork } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki } from '../helpers/pki.ts';
import { BENCH_SCRIPTS, benchConfig, benchPort } from './bench-config.ts';
import { ensureHaraka, HARAKA_VERSION } from './haraka.ts';

const here = import.meta.dirname;
const pki = await makeTestPki();
// ECDSA like most modern device certificates (and cheaper for the load generator than RSA).
const client = pki.clients.ecdsa;
const work = await mkdtemp(join(tmpdir(), 'postern-bench-'));


async function posternConfig(name: string, withScripts: boolean): Promise<{ configText: string; baseDir: string; port: number }> {
  const dir = join(work, name);
  await mkdir(join(dir, 'scripts'), { recursive: true });
  if (withScripts) for (const [f, text] of Object.entries(BENCH_SCRIPTS)) await writeFile(join(dir, 'scripts', f), text);
  await writeFile(join(dir, 'senders'), 'example.org blocked\n');
  const port = benchPort();
  return { port, baseDir: dir, configText: benchConfig(dir, port, pki) };
}

/** CPU seconds (user + system) a process has used so far, from /proc: robust to other load on the machine. */
async function cpuSeconds(pid: number, thread?: number): Promise<number> {
  const path = thread === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${thread}/stat`;
  const fields = (await readFile(path, 'utf8')).split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** Clock ticks of the whole machine so far: all, and stolen by the hypervisor (a shared VM's other guests). */
async function machineTicks(): Promise<{ total: number; steal: number }> {
  const cpu = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  return { total: cpu.reduce((a, b) => a + b, 0), steal: cpu[7] ?? 0 };
}

interface Server { stop: () => void; port: number; pid: number }

async function startServer(script: string, arg: unknown, quiet = false): Promise<{ stop: () => void; pid: number }> {
  // quiet: Haraka's dependencies print start-up chatter on stdout.
  const child = fork(join(here, script), [JSON.stringify(arg)], { stdio: ['ignore', quiet ? 'ignore' : 'inherit', 'inherit', 'ipc'] });
  await new Promise<void>((resolve, reject) => {
    child.once('message', () => resolve());
    child.once('exit', (code) => reject(new Error(`${script} exited ${code}`)));
  });
  return { stop: () => child.kill('SIGKILL'), pid: child.pid! };
}

interface LoadResult { rate: number; p50: number; p99: number; messages: number; clientCpuUs: number }

async function load(port: number, perConnection: number, messages: number, auth: boolean): Promise<LoadResult> {
  const child = fork(join(here, 'load-client.ts'), [JSON.stringify({
    port, concurrency: 20, messages, perConnection, cert: client.cert, key: client.key, ca: pki.ca.cert, auth,
  })], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; });
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  if (code !== 0) throw new Error(`load client failed (${code})`);
  return JSON.parse(out) as LoadResult;
}

const reuseMessages = Number(process.env.BENCH_REUSE ?? 4000);
const singleMessages = Number(process.env.BENCH_SINGLE ?? 1000);
interface Row { rate: number; p50: number; p99: number; cpuUs: number; clientCpuUs: number; mainBusy: number; steal: number }
const rows: Array<Row & { name: string; mode: string }> = [];

const targets: Array<{ name: string; start: () => Promise<Server>; auth: boolean }> = [
  { name: '(a) postern + scripts', auth: true, start: async () => { const c = await posternConfig('a', true); return { port: c.port, ...await startServer('postern-server.ts', c) }; } },
  { name: '(b) postern, no scripts', auth: true, start: async () => { const c = await posternConfig('b', false); return { port: c.port, ...await startServer('postern-server.ts', c) }; } },
  { name: '(c) bare smtp-server', auth: false, start: async () => { const port = benchPort(); return { port, ...await startServer('bare-server.ts', { port, cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert }) }; } },
];
// (h) Haraka, whose rate is the one-message-per-connection target (BENCH_HARAKA=0 leaves it out).
if (process.env.BENCH_HARAKA !== '0') {
  const haraka = await ensureHaraka();
  if ('error' in haraka) console.log(`(h) Haraka left out: ${haraka.error}`);
  else targets.push({ name: `(h) Haraka ${HARAKA_VERSION}`, auth: false, start: async () => { const port = benchPort(); return { port, ...await startServer('haraka-server.ts', { port, cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert, harakaDir: haraka.dir }, true) }; } });
}

// All servers run side by side and the rounds interleave them, so drift in the machine's load (this
// machine is shared) touches every target alike; each cell is the median of BENCH_ROUNDS runs.
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const servers: Server[] = [];
for (const t of targets) {
  const s = await t.start();
  await load(s.port, 10, 200, t.auth); // warm-up (JIT, isolates, TLS session setup)
  servers.push(s);
}
const samples = new Map<string, Row[]>();
for (let round = 0; round < rounds; round++) {
  for (const [i, t] of targets.entries()) {
    const s = servers[i]!;
    for (const [mode, perConnection, messages] of [['reuse (100/conn)', 100, reuseMessages], ['1 msg/conn', 1, singleMessages]] as const) {
      const [cpu0, main0, machine0, wall0] = [await cpuSeconds(s.pid), await cpuSeconds(s.pid, s.pid), await machineTicks(), performance.now()];
      const r = await load(s.port, perConnection, messages, t.auth);
      const wall = (performance.now() - wall0) / 1000;
      const [cpu1, main1, machine1] = [await cpuSeconds(s.pid), await cpuSeconds(s.pid, s.pid), await machineTicks()];
      const cpuUs = (cpu1 - cpu0) / r.messages * 1e6;
      // The event-loop thread's share of the wall time: near 100% minus steal, the server is the bottleneck.
      const mainBusy = (main1 - main0) / wall;
      const steal = (machine1.steal - machine0.steal) / Math.max(1, machine1.total - machine0.total);
      const key = `${t.name}\t${mode}`;
      samples.set(key, [...(samples.get(key) ?? []), { rate: r.rate, p50: r.p50, p99: r.p99, cpuUs, clientCpuUs: r.clientCpuUs, mainBusy, steal }]);
    }
  }
}
for (const s of servers) s.stop();
const median = (xs: number[]): number => { const v = [...xs].sort((x, y) => x - y); return v[Math.floor(v.length / 2)]!; };
for (const [key, runs] of samples) {
  const [name, mode] = key.split('\t') as [string, string];
  rows.push({ name, mode, rate: median(runs.map((r) => r.rate)), p50: median(runs.map((r) => r.p50)), p99: median(runs.map((r) => r.p99)), cpuUs: median(runs.map((r) => r.cpuUs)), clientCpuUs: median(runs.map((r) => r.clientCpuUs)), mainBusy: median(runs.map((r) => r.mainBusy)), steal: median(runs.map((r) => r.steal)) });
}
await rm(work, { recursive: true, force: true });

console.log(`\nSTARTTLS + client certificate, 20 concurrent clients, loopback; median of ${rounds} interleaved rounds\n`);
// The load generator shares the machine's cores: its CPU per message says how much was left for the server.
const ratio = (r: Row & { mode: string }, prefix: string): string => {
  const base = rows.find((b) => b.name.startsWith(prefix) && b.mode === r.mode);
  return base ? `${(r.rate / base.rate).toFixed(2)}×` : '-';
};
console.log('server                     | mode             |   msg/s | p50 ms | p99 ms | vs (c) | vs (h) | server CPU µs/msg | client CPU µs/msg | event loop busy | steal');
console.log('---------------------------|------------------|---------|--------|--------|--------|--------|-------------------|-------------------|-----------------|------');
for (const r of rows) {
  const base = rows.find((b) => b.name.startsWith('(c)') && b.mode === r.mode)!;
  console.log(`${r.name.padEnd(27)}| ${r.mode.padEnd(17)}| ${r.rate.toFixed(0).padStart(7)} | ${r.p50.toFixed(2).padStart(6)} | ${r.p99.toFixed(2).padStart(6)} | ${ratio(r, '(c)').padStart(6)} | ${ratio(r, '(h)').padStart(6)} | ${r.cpuUs.toFixed(0).padStart(6)} (${(r.cpuUs / base.cpuUs).toFixed(2)}×)   | ${r.clientCpuUs.toFixed(0).padStart(6)}            | ${(r.mainBusy * 100).toFixed(0).padStart(14)}% | ${(r.steal * 100).toFixed(0).padStart(4)}%`);
}
