/**
 * Load generator for a Postfix policy service: `concurrency` connections, each asking RCPT requests with
 * certificate attributes one at a time (as a Postfix smtpd process does), until `requests` answers came back.
 * Prints { rate, p50, p99 (ms per request), requests, clientCpuUs } as JSON.
 */
import net from 'node:net';

const { port, concurrency, requests, warmup, fingerprints } = JSON.parse(process.argv[2]!) as
  { port: number; concurrency: number; requests: number; warmup: number; fingerprints: string[] };

/** Request i belongs to SMTP session i/5 (Postfix asks a session's requests in a row on one connection). */
function request(i: number): string {
  const session = Math.floor(i / 5);
  const fp = fingerprints[session % fingerprints.length]!;
  return `request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=192.0.2.${session % 250}\nclient_name=laptop${session % 250}.example.org\n`
    + `reverse_client_name=laptop${session % 250}.example.org\nclient_port=${40000 + (session % 20000)}\nhelo_name=laptop.example.org\nsender=alice@example.org\n`
    + `recipient=r${i}@elsewhere.example\nrecipient_count=0\nqueue_id=\ninstance=${session.toString(16)}.5f3a.1.0\nsize=0\nsasl_method=\nsasl_username=\n`
    + `ccert_subject=alice\nccert_issuer=Example CA\nccert_fingerprint=${fp}\nccert_pubkey_fingerprint=${fp}\nencryption_protocol=TLSv1.3\n`
    + `encryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\nserver_address=127.0.0.1\nserver_port=25\npolicy_context=\n\n`;
}

const latencies: number[] = [];
let next = 0;
let done = 0;
let started = 0;
const total = warmup + requests;

async function connection(): Promise<void> {
  const socket = net.connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  await new Promise<void>((r, j) => { socket.once('connect', () => r()); socket.once('error', j); });
  socket.setEncoding('utf8');
  let buffer = '';
  let waiting: (() => void) | null = null;
  socket.on('data', (d: string) => {
    buffer += d;
    const end = buffer.indexOf('\n\n');
    if (end >= 0) {
      if (!buffer.startsWith('action=')) throw new Error(`unexpected answer ${buffer}`);
      buffer = buffer.slice(end + 2);
      waiting?.();
    }
  });
  while (next < total) {
    const first = next;
    next += 5; // one SMTP session's requests, in a row on this connection
    for (let i = first; i < first + 5 && i < total; i++) {
      const t = performance.now();
      await new Promise<void>((r) => { waiting = r; socket.write(request(i)); });
      if (i >= warmup) {
        latencies.push(performance.now() - t);
        if (done++ === 0) started = performance.now();
      }
    }
  }
  socket.end();
}

const cpu0 = process.cpuUsage();
await Promise.all(Array.from({ length: concurrency }, () => connection()));
const seconds = (performance.now() - started) / 1000;
const cpu = process.cpuUsage(cpu0);
latencies.sort((a, b) => a - b);
const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!;
process.stdout.write(JSON.stringify({ rate: done / seconds, p50: at(0.5), p99: at(0.99), requests: done, clientCpuUs: (cpu.user + cpu.system) / (warmup + requests) }));
