/**
 * Server CPU for one transaction of N pipelined RCPTs with an rcptto script (default 100, 1000 and 4000):
 * what a RCPT costs as the recipient list grows. The server runs in this process; the client only writes
 * the commands and counts reply lines, so the process's CPU over the RCPTs is the server's.
 * `node test/bench/many-recipients.ts [counts…]`, `ROUNDS` (default 3) rounds each, the median printed; `READS=1`: the
 * script reads ctx.transaction.recipients on every call.
 */
import net from 'node:net';
import { PLAIN_MX_CONFIG, startTestServer } from '../helpers/postern.ts';

const counts = process.argv.slice(2).map(Number).filter((n) => n > 0);
const rounds = Number(process.env.ROUNDS ?? 3);
const max = Math.max(...(counts.length ? counts : [4000]));

const server = await startTestServer({
  config: PLAIN_MX_CONFIG.replace('greetingDelayMs: 0', `greetingDelayMs: 0, maxRecipients: ${max}`),
  // READS=1: the script reads the recipient list too (docs/scripts.md's example: a limit on its length).
  scripts: { 'rcptto.ts': process.env.READS === '1'
    ? `export default function (ctx) { if (ctx.transaction.recipients.length > 5000) return defer('later'); if (!ctx.builtin.accepted) return reject('relay'); }`
    : `export default function (ctx) { if (!ctx.builtin.accepted) return reject('relay'); }` },
});

/** CPU ms the process spent over one transaction of `n` pipelined RCPTs, and how many got 250. */
async function transaction(n: number): Promise<{ cpuMs: number; accepted: number }> {
  const socket = net.connect(server.port('mx'), '127.0.0.1');
  let text = '';
  let lines = 0;
  let want = 0;
  let wake: (() => void) | null = null;
  socket.on('data', (d: Buffer) => {
    text += d.toString('latin1');
    const parts = text.split('\r\n');
    text = parts.pop()!;
    for (const l of parts) if (/^\d{3} /.test(l)) lines++;
    if (lines >= want && wake) { const w = wake; wake = null; w(); }
  });
  const until = (k: number) => new Promise<void>((r) => { want = k; if (lines >= k) r(); else wake = r; });
  await until(1);
  socket.write('EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n');
  await until(3);
  const codes = new Map<string, number>();
  let rest = '';
  const counter = (d: Buffer) => {
    const parts = (rest + d.toString('latin1')).split('\r\n');
    rest = parts.pop()!;
    for (const l of parts) codes.set(l.slice(0, 3), (codes.get(l.slice(0, 3)) ?? 0) + 1);
  };
  let batch = '';
  for (let i = 0; i < n; i++) batch += `RCPT TO:<user${i}@example.com>\r\n`;
  const before = process.cpuUsage();
  socket.on('data', counter);
  socket.write(batch);
  await until(3 + n);
  const used = process.cpuUsage(before);
  socket.off('data', counter);
  socket.write('QUIT\r\n');
  await until(4 + n);
  socket.destroy();
  return { cpuMs: (used.user + used.system) / 1000, accepted: codes.get('250') ?? 0 };
}

await transaction(200); // warm-up
for (const n of counts.length ? counts : [100, 1000, 4000]) {
  const runs: Array<{ cpuMs: number; accepted: number }> = [];
  for (let r = 0; r < rounds; r++) runs.push(await transaction(n));
  const cpu = runs.map((x) => x.cpuMs).sort((a, b) => a - b);
  console.log(`${n} recipients: server CPU ${cpu[cpu.length >> 1]!.toFixed(1)} ms (median of ${rounds}: ${cpu.map((c) => c.toFixed(0)).join(', ')}), accepted ${runs.map((x) => x.accepted).join('/')}`);
}
await server.stop();
process.exit(0);
