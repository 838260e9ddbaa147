/**
 * Load generator for a Postfix policy service: `concurrency` connections, each asking RCPT requests with
 * certificate attributes one at a time (as a Postfix smtpd process does: it waits for each answer).
 *  - rate 0: closed loop, every connection sends its next request as soon as the answer came (saturation:
 *    by Little's law the latency is about concurrency / throughput, plus the queueing variance);
 *  - rate R: open loop at R requests/s in all, R / concurrency per connection with the connections' phases
 *    staggered. A request whose time came while its connection still waits for an answer goes as soon as
 *    that answer arrives, and its latency is counted from when it was due (no coordinated omission), so a
 *    late load generator counts against the service too: `lagP99` shows how late its timer sent the
 *    requests that came due on a free connection (the generator's own lateness).
 * Kept cheap, since it shares the cores with the server: the requests are prepared Buffers, answers are
 * counted by scanning bytes, no promise per request. Prints { rate, p50, p99, p999, max (ms), requests,
 * clientCpuUs (per request), lagP99 (ms) } as JSON.
 */
import net from 'node:net';

const { port, concurrency, requests, warmup, fingerprints, rate } = JSON.parse(process.argv[2]!) as
  { port: number; concurrency: number; requests: number; warmup: number; fingerprints: string[]; rate?: number };

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
/** 2000 distinct requests (400 sessions, every fingerprint twice), reused in turn. */
const PREPARED = Array.from({ length: 2000 }, (_, i) => Buffer.from(request(i)));

const total = warmup + requests;
const latencies = new Float64Array(requests);
/** Open loop: how late the generator's timer sent requests that were due on a free connection (its own lag, not the service's). */
const lags = new Float64Array(total);
let lagged = 0;
let measured = 0;
let answered = 0;
let firstMeasured = 0;
let lastAnswer = 0;
const NL = 10;
const A = 0x61; // 'a' of "action="

interface Conn {
  socket: net.Socket;
  /** The global number of the request in flight (-1: none), and when it was due. */
  inFlight: number;
  dueAt: number;
  /** Scanning state: the previous byte was a newline / the next byte starts an answer. */
  newline: boolean;
  atStart: boolean;
  /** Open loop: this connection's k-th request (and the next one's due time). */
  k: number;
}

let nextClosed = 0;
let t0 = 0;
const periodMs = rate ? concurrency * 1000 / rate : 0;
let ended: () => void;
const allDone = new Promise<void>((r) => { ended = r; });

function send(c: Conn, n: number, dueAt: number): void {
  c.inFlight = n;
  c.dueAt = dueAt;
  c.socket.write(PREPARED[n % PREPARED.length]!);
}

/** Open loop: connection `index`'s k-th request, its global number and when it is due. */
const openNumber = (index: number, k: number): number => k * concurrency + index;
const openDue = (index: number, k: number): number => t0 + (k + index / concurrency) * periodMs;

function answeredOn(c: Conn, index: number): void {
  const now = performance.now();
  const n = c.inFlight;
  c.inFlight = -1;
  answered++;
  lastAnswer = now;
  if (n >= warmup) {
    if (measured === 0) firstMeasured = c.dueAt;
    latencies[measured] = now - c.dueAt;
    measured++;
  }
  if (answered === total) { ended(); return; }
  if (!rate) {
    // Closed loop: the next of this session's requests, else the next session.
    const next = n % 5 !== 4 && n + 1 < total ? n + 1 : nextClosed;
    if (next === nextClosed) nextClosed += 5;
    if (next < total) send(c, next, now);
    return;
  }
  c.k++;
  const next = openNumber(index, c.k);
  if (next < total && openDue(index, c.k) <= now) send(c, next, openDue(index, c.k));
}

async function open(index: number): Promise<Conn> {
  const socket = net.connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  await new Promise<void>((r, j) => { socket.once('connect', () => r()); socket.once('error', j); });
  const c: Conn = { socket, inFlight: -1, dueAt: 0, newline: false, atStart: true, k: 0 };
  socket.on('data', (chunk: Buffer) => {
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (c.atStart) {
        if (b !== A) throw new Error(`unexpected answer ${chunk.toString()}`);
        c.atStart = false;
      }
      if (b === NL && c.newline) { // the empty line ends an answer
        c.newline = false;
        c.atStart = true;
        answeredOn(c, index);
      } else c.newline = b === NL;
    }
  });
  return c;
}

const conns = await Promise.all(Array.from({ length: concurrency }, (_, i) => open(i)));
const cpu0 = process.cpuUsage();
t0 = performance.now();
if (!rate) {
  for (const c of conns) { send(c, nextClosed, t0); nextClosed += 5; }
} else {
  // One timer for every connection: each tick sends what came due on the free connections.
  const tick = (): void => {
    const now = performance.now();
    for (const [index, c] of conns.entries()) {
      // A connection waiting for an answer sends its due request when the answer comes (answeredOn).
      if (c.inFlight >= 0) continue;
      const n = openNumber(index, c.k);
      if (n < total && openDue(index, c.k) <= now) {
        send(c, n, openDue(index, c.k));
        if (n >= warmup) lags[lagged++] = now - c.dueAt;
      }
    }
    if (answered < total) setTimeout(tick, 1);
  };
  tick();
}
await allDone;
const cpu = process.cpuUsage(cpu0);
for (const c of conns) c.socket.end();
const sorted = latencies.slice(0, measured).sort();
const lagSorted = lagged ? lags.slice(0, lagged).sort() : new Float64Array(1);
const at = (v: Float64Array, q: number): number => v[Math.min(v.length - 1, Math.floor(q * v.length))]!;
process.stdout.write(JSON.stringify({
  rate: measured / ((lastAnswer - firstMeasured) / 1000), p50: at(sorted, 0.5), p99: at(sorted, 0.99), p999: at(sorted, 0.999),
  max: sorted[sorted.length - 1], requests: measured, clientCpuUs: (cpu.user + cpu.system) / total, lagP99: at(lagSorted, 0.99),
}));
