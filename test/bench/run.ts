/**
 * `npm run bench`: messages/s and p50/p99 per message over loopback, in one run, for
 *   (a) Postern, a script on every context, durable spool;  (b) Postern without scripts;
 *   (c) bare smtp-server accepting and discarding;  (h) Haraka accepting and discarding (installed on first use);
 *   (e) (a) whose data script also edits the header (one remove, one add), compared with (a) in the same rounds;
 *   (s) (a) with a shadow copy of its own scripts (shadowScripts: every call runs twice; BENCH_SHADOW=0 leaves it out);
 *   (a) and (b) again as `postern serve` with `workers: 1` and `workers: 2` (server CPU: every process of it);
 * each with STARTTLS + a client certificate, with connection reuse and with one message per connection.
 * Server and load generator run in separate processes. Ratios against (c) and (h) are the medians of each
 * round's paired ratios (all servers measured back to back in one mode, in alternating order).
 */
import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki } from '../helpers/pki.ts';
import { BENCH_SCRIPTS, EDIT_DATA, benchConfig, benchPort } from './bench-config.ts';
import { ensureHaraka, HARAKA_VERSION } from './haraka.ts';
import { load, measure, median, startServer } from './measure.ts';

const pki = await makeTestPki();
const work = await mkdtemp(join(tmpdir(), 'postern-bench-'));


async function posternConfig(name: string, withScripts: boolean, opts: { scripts?: Record<string, string>; shadow?: boolean } = {}): Promise<{ configText: string; baseDir: string; port: number }> {
  const withShadow = opts.shadow === true;
  const dir = join(work, name);
  await mkdir(join(dir, 'scripts'), { recursive: true });
  if (withScripts) for (const [f, text] of Object.entries({ ...BENCH_SCRIPTS, ...opts.scripts })) await writeFile(join(dir, 'scripts', f), text);
  // (s): the same scripts once more as the listener's shadow folder (the price of a shadow run).
  if (withShadow) {
    await mkdir(join(dir, 'shadow'), { recursive: true });
    for (const [f, text] of Object.entries(BENCH_SCRIPTS)) await writeFile(join(dir, 'shadow', f), text);
  }
  await writeFile(join(dir, 'senders'), 'example.org blocked\n');
  const port = benchPort();
  return { port, baseDir: dir, configText: benchConfig(dir, port, pki, withShadow ? { shadowScripts: join(dir, 'shadow') } : {}) };
}

interface Server { stop: () => void; port: number; pid: number }

const reuseMessages = Number(process.env.BENCH_REUSE ?? 4000);
const singleMessages = Number(process.env.BENCH_SINGLE ?? 1000);
interface Row { rate: number; p50: number; p99: number; cpuUs: number; clientCpuUs: number; mainBusy: number; machineUs: number; idle: number; steal: number }
const rows: Array<Row & { name: string; mode: string }> = [];

const targets: Array<{ name: string; start: () => Promise<Server>; auth: boolean }> = [
  { name: '(a) postern + scripts', auth: true, start: async () => { const c = await posternConfig('a', true); return { port: c.port, ...await startServer('postern-server.ts', c) }; } },
  { name: '(e) (a) + header edit', auth: true, start: async () => { const c = await posternConfig('e', true, { scripts: { 'data.ts': EDIT_DATA } }); return { port: c.port, ...await startServer('postern-server.ts', c) }; } },
  { name: '(b) postern, no scripts', auth: true, start: async () => { const c = await posternConfig('b', false); return { port: c.port, ...await startServer('postern-server.ts', c) }; } },
  ...(process.env.BENCH_SHADOW === '0' ? [] : [{ name: '(s) (a) + shadow copy', auth: true, start: async () => { const c = await posternConfig('s', true, { shadow: true }); return { port: c.port, ...await startServer('postern-server.ts', c) }; } }]),
  { name: '(c) bare smtp-server', auth: false, start: async () => { const port = benchPort(); return { port, ...await startServer('bare-server.ts', { port, cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert }) }; } },
];
// (a) and (b) as `postern serve` with 1 and 2 worker processes (BENCH_WORKERS=0 leaves them out): server CPU
// counts the supervisor, the workers and the queue process.
if (process.env.BENCH_WORKERS !== '0') {
  for (const [letter, withScripts, auth] of [['a', true, true], ['b', false, true]] as const) {
    for (const workers of [1, 2]) {
      targets.push({ name: `(${letter}) serve, workers: ${workers}`, auth, start: async () => {
        const c = await posternConfig(`${letter}-serve-${workers}`, withScripts);
        return { port: c.port, ...await startServer('postern-serve.ts', { ...c, workers }) };
      } });
    }
  }
}
// (h) Haraka, whose rate is the one-message-per-connection target (BENCH_HARAKA=0 leaves it out).
if (process.env.BENCH_HARAKA !== '0') {
  const haraka = await ensureHaraka();
  if ('error' in haraka) console.log(`(h) Haraka left out: ${haraka.error}`);
  else targets.push({ name: `(h) Haraka ${HARAKA_VERSION}`, auth: false, start: async () => { const port = benchPort(); return { port, ...await startServer('haraka-server.ts', { port, cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert, harakaDir: haraka.dir }, true) }; } });
}

// All servers run side by side and the rounds interleave them, so drift in the machine's load (this
// machine is shared) touches every target alike; each cell is the median of BENCH_ROUNDS runs.
const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const servers: Server[] = [];
for (const t of targets) {
  const s = await t.start();
  await load(pki, s.port, 10, 200, t.auth); // warm-up (JIT, isolates, TLS session setup)
  servers.push(s);
}
const samples = new Map<string, Row[]>();
// Paired ratios: each target's rate over (c)'s and (h)'s in the same round and mode, measured minutes
// apart at most instead of across the whole run; the table gives their medians.
const paired = new Map<string, number[]>();
const modes = [['reuse (100/conn)', 100, reuseMessages], ['1 msg/conn', 1, singleMessages]] as const;
for (let round = 0; round < rounds; round++) {
  for (const [mode, perConnection, messages] of modes) {
    // Same mode back to back, in alternating order, so that drift in the host's speed touches every target alike.
    const order = [...targets.keys()];
    if (round % 2 === 1) order.reverse();
    const got = new Map<string, Row>();
    for (const i of order) {
      const t = targets[i]!;
      const m = await measure(pki, servers[i]!, perConnection, messages, t.auth);
      const key = `${t.name}\t${mode}`;
      samples.set(key, [...(samples.get(key) ?? []), m]);
      got.set(t.name, m);
    }
    for (const [name, m] of got) {
      for (const prefix of ['(c)', '(h)', '(a)']) {
        const base = [...got].find(([n]) => n.startsWith(prefix))?.[1];
        if (base) paired.set(`${name}\t${mode}\t${prefix}`, [...(paired.get(`${name}\t${mode}\t${prefix}`) ?? []), m.rate / base.rate]);
      }
    }
  }
}
for (const s of servers) s.stop();
for (const [key, runs] of samples) {
  const [name, mode] = key.split('\t') as [string, string];
  rows.push({ name, mode, rate: median(runs.map((r) => r.rate)), p50: median(runs.map((r) => r.p50)), p99: median(runs.map((r) => r.p99)), cpuUs: median(runs.map((r) => r.cpuUs)), clientCpuUs: median(runs.map((r) => r.clientCpuUs)), mainBusy: median(runs.map((r) => r.mainBusy)), machineUs: median(runs.map((r) => r.machineUs)), idle: median(runs.map((r) => r.idle)), steal: median(runs.map((r) => r.steal)) });
}
// One line per server, reuse first (the order before rounds were grouped by mode).
rows.sort((x, y) => x.name.localeCompare(y.name) || (x.mode.startsWith('reuse') ? -1 : 1) - (y.mode.startsWith('reuse') ? -1 : 1));
await rm(work, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 }); // serve's children may still be ending

console.log(`\nSTARTTLS + client certificate, 20 concurrent clients, loopback; median of ${rounds} interleaved rounds (ratios: median of each round's paired ratios)\n`);
// The load generator shares the machine's cores: its CPU per message says how much was left for the server.
const ratio = (r: Row & { name: string; mode: string }, prefix: string): string => {
  const xs = paired.get(`${r.name}\t${r.mode}\t${prefix}`);
  return xs ? `${median(xs).toFixed(2)}×` : '-';
};
console.log('server                     | mode             |   msg/s | p50 ms | p99 ms | vs (c) | vs (h) | server CPU µs/msg | client CPU µs/msg | event loop busy | machine CPU µs/msg | idle | steal');
console.log('---------------------------|------------------|---------|--------|--------|--------|--------|-------------------|-------------------|-----------------|--------------------|------|------');
for (const r of rows) {
  const base = rows.find((b) => b.name.startsWith('(c)') && b.mode === r.mode)!;
  console.log(`${r.name.padEnd(27)}| ${r.mode.padEnd(17)}| ${r.rate.toFixed(0).padStart(7)} | ${r.p50.toFixed(2).padStart(6)} | ${r.p99.toFixed(2).padStart(6)} | ${ratio(r, '(c)').padStart(6)} | ${ratio(r, '(h)').padStart(6)} | ${r.cpuUs.toFixed(0).padStart(6)} (${(r.cpuUs / base.cpuUs).toFixed(2)}×)   | ${r.clientCpuUs.toFixed(0).padStart(6)}            | ${(r.mainBusy * 100).toFixed(0).padStart(14)}% | ${r.machineUs.toFixed(0).padStart(18)} | ${(r.idle * 100).toFixed(0).padStart(3)}% | ${(r.steal * 100).toFixed(0).padStart(4)}%`);
}
for (const [key, xs] of paired) {
  const [name, mode, prefix] = key.split('\t') as [string, string, string];
  if (prefix === '(c)' && !name.startsWith('(c)')) console.log(`${name} vs (c), ${mode}, by round: ${xs.map((x) => x.toFixed(2)).join(' ')}`);
}
// What a variant of (a) costs — a header edit (e), a shadow copy (s) — against (a), paired by round.
for (const variant of ['(e)', '(s)']) {
  for (const [mode] of modes) {
    const v = rows.find((r) => r.name.startsWith(variant) && r.mode === mode);
    const a = rows.find((r) => r.name.startsWith('(a)') && r.mode === mode);
    const xs = v ? paired.get(`${v.name}	${mode}	(a)`) : undefined;
    if (!v || !a || !xs) continue;
    console.log(`${v.name} vs (a), ${mode}: rate ${median(xs).toFixed(3)}× (by round: ${xs.map((x) => x.toFixed(3)).join(' ')}); ` +
      `server CPU ${v.cpuUs.toFixed(0)} vs ${a.cpuUs.toFixed(0)} µs/msg (${(v.cpuUs / a.cpuUs).toFixed(3)}×)`);
  }
}
