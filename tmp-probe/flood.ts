import { readFileSync } from 'node:fs';
import { startCluster, ONE_WORKER } from '../test/helpers/cluster.ts';
import { SmtpTestClient } from '../test/helpers/smtp-client.ts';
const stuck = process.argv[2] ?? 'Array(2 ** 32 - 1).lastIndexOf(1)';
const extra = process.argv[3] ?? 'sandbox: { fastPathMs: 0, timeoutMs: 100 }';
const ATT = Number(process.env.ATT ?? 6), DUR = Number(process.env.DUR ?? 12000);
const c = await startCluster({ config: `${ONE_WORKER}${extra}\n`, scripts: { 'rcptto.js': `export default function (ctx) { if (ctx.address.localPart === 'hang') return reject('r=' + ${stuck}); return reject('no', { code: 550 }); }\n` } });
const t0 = performance.now();
const now = () => Math.round(performance.now() - t0);
const workerPid = async () => (await c.cluster()).processes.find((p) => p.role === 'worker')?.pid;
const threads = (pid: number) => { try { return Number(/Threads:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]); } catch { return -1; } };
const cpu = (pid: number) => { try { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' '); return (Number(f[11]) + Number(f[12])) / 100; } catch { return -1; } };
let stop = false; const counts: Record<string, number> = {};
async function attacker(i: number) {
  while (!stop) {
    let cl: SmtpTestClient | undefined;
    try {
      cl = await SmtpTestClient.connect(c.port('in'));
      await cl.read(30000); await cl.command('EHLO a', 30000); await cl.command('MAIL FROM:<a@x.test>', 30000);
      while (!stop) { const r = await cl.command('RCPT TO:<hang@example.test>', 30000); counts[r.text.slice(0, 9)] = (counts[r.text.slice(0, 9)] ?? 0) + 1; }
    } catch { counts.closed = (counts.closed ?? 0) + 1; } finally { cl?.destroy(); }
  }
}
const lat: number[] = [];
async function ordinary() {
  while (!stop) {
    const s = performance.now();
    try {
      const cl = await SmtpTestClient.connect(c.port('in'));
      await cl.read(30000); await cl.command('EHLO o', 30000); await cl.command('MAIL FROM:<o@x.test>', 30000);
      await cl.command('RCPT TO:<nobody@example.test>', 30000); cl.destroy();
      lat.push(Math.round(performance.now() - s));
    } catch { lat.push(-1); }
    await new Promise((r) => setTimeout(r, 200));
  }
}
const work = [...Array(ATT)].map((_, i) => attacker(i)); work.push(ordinary());
const mon = setInterval(async () => { const pid = await workerPid(); if (pid) console.log(now(), 'pid', pid, 'threads', threads(pid), 'cpu', cpu(pid), JSON.stringify(counts), 'lat', lat.splice(0).join(',')); }, 1000);
await new Promise((r) => setTimeout(r, DUR)); stop = true; clearInterval(mon);
await Promise.race([Promise.all(work), new Promise((r) => setTimeout(r, 5000))]);
console.log('fences', JSON.stringify((await c.cluster()).fences), 'restarts', (await c.cluster()).processes.map((p) => p.restarts));
console.log(c.logs.filter((l) => Number(l.level) >= 30 && !/policy script/.test(String(l.msg))).map((l) => `${String(l.time).slice(11)} ${l.level} ${String(l.msg).slice(0, 140)}`).slice(0, 60).join('\n'));
await c.stop(); process.exit(0);
