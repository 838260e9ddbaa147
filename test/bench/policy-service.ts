/**
 * `npm run bench:policy`: Postfix policy requests per second and the latency per request, from a load
 * generator speaking the policy protocol (20 connections, RCPT requests with certificate attributes), for
 *   (s) a policy service with an rcptto script (a fingerprint-table lookup, as in examples/postfix-policy-service);
 *   (b) the same service without scripts (protocol, mapping and answer only: the baseline);
 * each in its own process, measured in alternating rounds. Reports requests/s, p50/p99 in ms and server CPU
 * per request; the ratio s/b is the median of each round's pair. ROUNDS, REQUESTS set the length.
 */
import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { fork } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchPort } from './bench-config.ts';
import { cpuSeconds, median, startServer } from './measure.ts';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const REQUESTS = Number(process.env.REQUESTS ?? 60_000);
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

async function server(name: string, withScript: boolean): Promise<{ port: number; pid: number; stop: () => void }> {
  const dir = join(work, name);
  await mkdir(join(dir, 'scripts'), { recursive: true });
  if (withScript) await writeFile(join(dir, 'scripts', 'rcptto.ts'), SCRIPT);
  // Half the fingerprints are listed: accepts and rejects alternate.
  await writeFile(join(dir, 'relay_certs'), fingerprints.filter((_, i) => i % 2 === 0).map((f) => `${f} device`).join('\n') + '\n');
  const port = benchPort();
  const configText = `
dataDir: ${dir}/data
scripts: ${dir}/scripts
localDomains: [example.org]
tables: { relay_certs: ${dir}/relay_certs }
log: { level: warn }
policyServices: [{ name: bench, listen: 127.0.0.1:${port}, authoritative: true }]
`;
  return { port, ...await startServer('postern-server.ts', { configText, baseDir: dir }) };
}

interface Result { rate: number; p50: number; p99: number; requests: number; clientCpuUs: number; serverCpuUs: number }

async function load(s: { port: number; pid: number }): Promise<Result> {
  const cpu0 = await cpuSeconds(s.pid);
  const child = fork(join(import.meta.dirname, 'policy-load.ts'), [JSON.stringify({ port: s.port, concurrency: 20, requests: REQUESTS, warmup: 5000, fingerprints })],
    { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; });
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  if (code !== 0) throw new Error(`load generator failed (${code})`);
  const r = JSON.parse(out) as Omit<Result, 'serverCpuUs'>;
  return { ...r, serverCpuUs: ((await cpuSeconds(s.pid)) - cpu0) * 1e6 / (REQUESTS + 5000) };
}

const withScript = await server('script', true);
const baseline = await server('baseline', false);
const results: Record<'script' | 'baseline', Result[]> = { script: [], baseline: [] };
const ratios: number[] = [];
try {
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 ? ['baseline', 'script'] as const : ['script', 'baseline'] as const;
    for (const which of order) results[which].push(await load(which === 'script' ? withScript : baseline));
    ratios.push(results.script.at(-1)!.rate / results.baseline.at(-1)!.rate);
  }
} finally {
  withScript.stop();
  baseline.stop();
  await rm(work, { recursive: true, force: true });
}
const row = (name: string, rs: Result[]) => {
  const m = (f: (r: Result) => number) => median(rs.map(f));
  return `${name.padEnd(36)} ${m((r) => r.rate).toFixed(0).padStart(7)} req/s   p50 ${m((r) => r.p50).toFixed(3)} ms   p99 ${m((r) => r.p99).toFixed(3)} ms   server CPU ${m((r) => r.serverCpuUs).toFixed(1)} µs/req`;
};
console.log(`policy service, 20 connections, ${REQUESTS} RCPT requests per run, ${ROUNDS} rounds (medians)`);
console.log(row('(s) rcptto script + table lookup', results.script));
console.log(row('(b) no script (baseline)', results.baseline));
console.log(`s/b throughput ratio: ${median(ratios).toFixed(2)}`);
