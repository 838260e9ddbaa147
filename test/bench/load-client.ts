/**
 * Load generator (runs in its own process): C concurrent clients, each STARTTLS with a client
 * certificate, sending M messages in total either over reused connections or one per connection.
 * Prints JSON: messages, seconds, msg/s, p50/p99 latency (ms) per message (MAIL FROM → 250 after DATA).
 */
import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';

interface Args { port: number; concurrency: number; messages: number; perConnection: number; cert: string; key: string; ca: string; auth: boolean }
const args = JSON.parse(process.argv[2]!) as Args;
const cert = readFileSync(args.cert, 'utf8');
const key = readFileSync(args.key, 'utf8');
const ca = readFileSync(args.ca, 'utf8');
// One TLS context for every connection, as a real client keeps one: building it per connection (parsing
// key, certificate and CA again) cost this process more CPU than the handshake itself.
const secureContext = tls.createSecureContext({ cert, key, ca });
const body = 'From: bench@example.com\r\nTo: sink@example.com\r\nSubject: bench\r\n\r\n' + 'x'.repeat(70).concat('\r\n').repeat(14);

class Lines {
  #buf = '';
  #wait: ((line: string) => void) | null = null;
  #lines: string[] = [];
  feed(s: string): void {
    this.#buf += s;
    let i: number;
    while ((i = this.#buf.indexOf('\r\n')) >= 0) {
      const line = this.#buf.slice(0, i);
      this.#buf = this.#buf.slice(i + 2);
      if (/^\d{3}-/.test(line)) continue;
      if (this.#wait) { const w = this.#wait; this.#wait = null; w(line); } else this.#lines.push(line);
    }
  }
  next(): Promise<string> {
    const l = this.#lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((r) => { this.#wait = r; });
  }
}

async function session(count: number, latencies: number[]): Promise<void> {
  const raw = net.connect({ host: '127.0.0.1', port: args.port });
  raw.setNoDelay(true);
  const lines = new Lines();
  raw.setEncoding('utf8');
  const onRaw = (d: string): void => lines.feed(d);
  raw.on('data', onRaw);
  let sock: net.Socket = raw;
  const cmd = async (c: string, expect: number): Promise<void> => {
    sock.write(c + '\r\n');
    const l = await lines.next();
    if (!l.startsWith(String(expect))) throw new Error(`${c} -> ${l}`);
  };
  const greet = await lines.next();
  if (!greet.startsWith('220')) throw new Error(greet);
  await cmd('EHLO bench.example', 250);
  await cmd('STARTTLS', 220);
  raw.off('data', onRaw);
  sock = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect({ socket: raw, secureContext, servername: 'localhost' }, () => resolve(s));
    s.once('error', reject);
  });
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => lines.feed(d));
  await cmd('EHLO bench.example', 250);
  if (args.auth) await cmd('AUTH EXTERNAL =', 235);
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    await cmd('MAIL FROM:<bench@example.com>', 250);
    await cmd('RCPT TO:<sink@example.com>', 250);
    await cmd('DATA', 354);
    await cmd(body + '.', 250);
    latencies.push(performance.now() - t0);
  }
  sock.write('QUIT\r\n');
  await lines.next();
  sock.destroy();
}

const latencies: number[] = [];
let remaining = args.messages;
const t0 = performance.now();
const cpu0 = process.cpuUsage();
await Promise.all(Array.from({ length: args.concurrency }, async () => {
  while (remaining > 0) {
    const n = Math.min(args.perConnection, remaining);
    remaining -= n;
    await session(n, latencies);
  }
}));
const seconds = (performance.now() - t0) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p: number): number => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]!;
const cpu = process.cpuUsage(cpu0);
const clientCpuUs = (cpu.user + cpu.system) / latencies.length;
process.stdout.write(JSON.stringify({ messages: latencies.length, seconds, rate: latencies.length / seconds, p50: pct(0.5), p99: pct(0.99), clientCpuUs }) + '\n');
