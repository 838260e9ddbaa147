/**
 * Can one address starve others of the script sandbox? A crowd of connections from 127.0.0.2 sends EHLO over and
 * over with a name that makes the helo script slow (CPU within its time limit, CPU past it, or an awaited DNS
 * lookup that never answers); a bystander from 127.0.0.1 sends EHLO with a fast name meanwhile. Prints the
 * bystander's replies by code and its reply times, and the crowd's replies by code.
 *
 *   node test/bench/client-starvation.ts [serve|one] [cpu|spin|dns] [crowd=50] [seconds=10] [workers=2]
 *
 * ROUND_ROBIN=1 spreads connections over the workers (`serve`); SHOW_LOGS=1 prints the server's warnings and
 * errors, counted, those of the bystander's connections marked BYSTANDER. Real sockets, the real server: the
 * numbers drift with the machine's load, so compare two trees in the same minutes.
 */
import { startCluster, ONE_WORKER, TWO_WORKERS } from '../helpers/cluster.ts';
import { startTestServer } from '../helpers/postern.ts';
import { startDnsServer } from '../helpers/dns-server.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const [mode = 'serve', kind = 'cpu', crowdArg = '50', secondsArg = '10', workersArg = '2'] = process.argv.slice(2);
const crowdSize = Number(crowdArg);
const seconds = Number(secondsArg);

const dns = await startDnsServer({ 'fast.example': [{ type: 'A', value: '192.0.2.1' }] });
dns.silent.add('slow.example');

const HELO = {
  // Spins ~80 ms of its 100 ms limit for the crowd's name: slow but within its limit.
  cpu: `export default function (ctx) { if (ctx.helo.name.startsWith('slow')) { const end = Date.now() + 80; while (Date.now() < end); } if (ctx.connection.remoteAddress === '127.0.0.1') log('bystander'); }`,
  // Spins past its limit: the crowd's calls fail (451), each holding an isolate for the whole limit.
  spin: `export default function (ctx) { if (ctx.helo.name.startsWith('slow')) for (;;); if (ctx.connection.remoteAddress === '127.0.0.1') log('bystander'); }`,
  // Waits for a DNS answer that never comes (dns.timeoutMs, 80% of the call's limit).
  dns: `export default async function (ctx) { await dns.resolve(ctx.helo.name, 'A'); }`,
}[kind];
if (!HELO) throw new Error(`unknown kind ${kind}`);
const dnsConfig = `dns: { servers: ['${dns.address}'] }\n`;

let port: number;
let stop: () => Promise<void>;
let logs: Array<Record<string, unknown>> = [];
if (mode === 'serve') {
  const base = workersArg === '1' ? ONE_WORKER : TWO_WORKERS.replace('workers: 2', `workers: ${workersArg}`);
  const c = await startCluster({ config: dnsConfig + (process.env.ROUND_ROBIN ? 'workerChoice: roundRobin\n' : '') + base, scripts: { 'helo.ts': HELO } });
  port = c.port('in');
  logs = c.logs;
  stop = () => c.stop();
} else {
  const s = await startTestServer({
    config: `${dnsConfig}localDomains: [example.com]\nlisteners:\n  - name: in\n    listen: 127.0.0.1:0\n    tls: { mode: none }\n    limits: { greetingDelayMs: 0 }\n`,
    scripts: { 'helo.ts': HELO },
  });
  port = s.port('in');
  logs = s.logs;
  stop = () => s.stop();
}

const end = performance.now() + seconds * 1000;
const count = (m: Map<string, number>, k: string): void => { m.set(k, (m.get(k) ?? 0) + 1); };
const crowdReplies = new Map<string, number>();
const bystanderReplies = new Map<string, number>();
const times: number[] = [];

async function crowdMember(): Promise<void> {
  while (performance.now() < end) {
    let c: SmtpTestClient;
    try { c = await SmtpTestClient.connect(port, { localAddress: '127.0.0.2' }); } catch { count(crowdReplies, 'connect-failed'); continue; }
    try {
      const greeting = await c.read(30_000);
      if (!greeting.text.startsWith('220')) { count(crowdReplies, greeting.text.slice(0, 3)); c.destroy?.(); await new Promise((r) => setTimeout(r, 50)); continue; }
      while (performance.now() < end) {
        const r = await c.command('EHLO slow.example', 30_000);
        count(crowdReplies, r.text.slice(0, 3));
        if (r.text.startsWith('421')) break;
      }
    } catch { count(crowdReplies, 'closed'); }
    try { c.destroy?.(); } catch { /* gone */ }
  }
}

async function bystander(): Promise<void> {
  await new Promise((r) => setTimeout(r, 1000)); // the crowd first
  while (performance.now() < end) {
    const c = await SmtpTestClient.connect(port, { localAddress: '127.0.0.1' });
    await c.read(30_000);
    for (let i = 0; i < 10 && performance.now() < end; i++) {
      const t0 = performance.now();
      const r = await c.command('EHLO fast.example', 30_000);
      times.push(performance.now() - t0);
      count(bystanderReplies, r.text.slice(0, 3));
    }
    await c.quit().catch(() => {});
  }
}

await Promise.all([...Array.from({ length: crowdSize }, crowdMember), bystander()]);
times.sort((a, b) => a - b);
const q = (p: number): string => (times[Math.min(times.length - 1, Math.floor(p * times.length))] ?? NaN).toFixed(1);
console.log(JSON.stringify({
  mode, kind, crowdSize, seconds,
  bystander: Object.fromEntries(bystanderReplies), bystanderMs: { p50: q(0.5), p90: q(0.9), p99: q(0.99), max: q(1) },
  crowd: Object.fromEntries(crowdReplies),
}));
if (process.env.SHOW_LOGS) {
  const seen = new Map<string, number>();
  const bystanderIds = new Set(logs.filter((l) => l.msg === 'bystander').map((l) => String(l.cid)));
  for (const l of logs) if ((l.level === 'warn' || l.level === 'error' || Number(l.level) >= 40) && l.msg !== 'bystander') count(seen, `${bystanderIds.has(String(l.cid)) ? 'BYSTANDER' : ''} ${String(l.err ?? l.msg)}`.replace(/\d+ ms/g, 'N ms').replace(/\/tmp\/[^ ]*/g, '').replace(/isolate \d+/g, 'isolate N'));
  for (const [k, n] of seen) console.log(n, k.slice(0, 400));
}
await stop();
await dns.stop();
process.exit(0);
