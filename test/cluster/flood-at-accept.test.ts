// Under `postern serve` every accepted connection waits in the supervisor's one queue until a worker takes
// it. While no worker could (all busy, or one stopped and being replaced), a flood waited there too, each
// to get its 421 later, and filled the queue every other client waits in. A connection that would be more
// than its client's maxConnectionsPerIp waiting, or more than its listener's maxConnections waiting, is now
// closed at accept, unanswered. Here the only worker is stopped (SIGSTOP): the supervisor hands it a few
// connections it never takes, then queues; it replaces the worker a few seconds later. With workerChoice:
// roundRobin, where the supervisor accepts and hands over (with the default fill the workers accept on the
// socket the supervisor holds, so connections no worker takes wait in the kernel's listen backlog instead).
// One server for the file: each test floods a listener of its own (the supervisor counts, logs and reports
// each listener's flood apart), and the worker it stops is replaced before the test ends.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { proxyV1 } from '../helpers/proxy-header.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';

const LIMIT = 2;
const CONNECTIONS = 16;

/** Listener `name` on a free port with `limits`. */
const listener = (name: string, limits: string): string => `
  - name: ${name}
    listen: 127.0.0.1:{PORT:${name}}
    reverseDns: false
    limits: ${limits}`;

// One worker the supervisor hands connections to (roundRobin), an admin listener, a listener for each test.
let c: ClusterProcess;
before(async () => {
  c = await startCluster({ config: `
workers: 1
workerChoice: roundRobin
admin: { listen: "127.0.0.1:{PORT:admin}" }
listeners:${listener('perip', `{ greetingDelayMs: 0, maxConnectionsPerIp: ${LIMIT} }`)}${listener('many', `{ greetingDelayMs: 0, maxConnections: ${LIMIT} }`)}${
  // A proxyProtocol listener: the balancer's connections (their headers unread while they wait) against maxConnections.
  listener('lb', `{ greetingDelayMs: 0, maxConnections: ${LIMIT} }\n    proxyProtocol: { trusted: [127.0.0.1] }`)}${
  // Its limit is raised by a reload: written apart from the others' (the test edits this line alone).
  listener('raised', `{ maxConnectionsPerIp: ${LIMIT}, greetingDelayMs: 0 }`)}${
  listener('untrusted', '{ greetingDelayMs: 0 }\n    proxyProtocol: { trusted: [10.0.0.0/8] }')}
policyServices:
  - { name: policy, listen: "127.0.0.1:{PORT:policy}", limits: { maxConnections: ${LIMIT} } }
` });
});
after(() => c?.stop());

/** The worker a test stopped last: the supervisor replaces it. */
let stopped = 0;
/** The pid of the ready worker, once it is not the one stopped last. */
const readyWorker = (): Promise<number> => c.waitFor('a ready worker, not the one stopped', async () => {
  const p = (await c.cluster()).processes.find((x) => x.role === 'worker' && x.index === 0);
  return p?.ready && p.pid && p.pid !== stopped ? p.pid : null;
});
/** The ready worker stopped (SIGSTOP): its pid. */
async function stopWorker(): Promise<number> {
  stopped = await readyWorker();
  process.kill(stopped, 'SIGSTOP');
  return stopped;
}

/** The supervisor's log lines about listener `name`. */
const linesOf = (name: string): Array<Record<string, unknown>> => c.logs.filter((l) => l.listener === name);

/** A raw connection from `localAddress`; resolves once it is closed, with what it received. */
async function open(port: number, localAddress: string, header?: string | Buffer): Promise<{ socket: net.Socket; outcome: Promise<string> }> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress });
  if (header !== undefined) socket.write(header);
  socket.on('error', () => undefined);
  let got = '';
  socket.on('data', (d: Buffer) => {
    got += d.toString('latin1');
    if (/\r\n/.test(got) && !socket.writableEnded) socket.end('QUIT\r\n'); // a reply came: leave
  });
  // Not once(): a reset (the header written, then the close) is an 'error', and it would reject.
  const outcome = new Promise<string>((resolve) => socket.once('close', () => resolve(got)));
  await once(socket, 'connect');
  return { socket, outcome };
}

for (const [name, listenerName, address] of [
  ['one address over maxConnectionsPerIp', 'perip', (_i: number) => '127.0.4.1'],
  ['many addresses over maxConnections', 'many', (i: number) => `127.0.5.${i + 1}`],
  ['a balancer\'s connections over maxConnections', 'lb', (_i: number) => '127.0.0.1'],
] as const) {
  test(`${name} waiting for a worker: closed at accept, unanswered`, { timeout: 120_000 }, async () => {
    const sockets: net.Socket[] = [];
    try {
      await stopWorker();
      const outcomes: Array<Promise<string>> = [];
      const proxied = listenerName === 'lb';
      for (let i = 0; i < CONNECTIONS; i++) {
        const o = await open(c.port(listenerName), address(i), proxied ? proxyV1(`192.0.2.${i + 1}`, 40_000 + i) : undefined);
        sockets.push(o.socket);
        outcomes.push(o.outcome);
      }
      // The stopped worker is replaced; the connections that waited are served by the new one (220 or 421),
      // the few handed to the stopped one are closed with it, and the rest were closed at accept.
      const got = await Promise.all(outcomes);
      const unanswered = got.filter((g) => g === '').length;
      // At most MAX_INFLIGHT + 1 handed to the stopped worker, LIMIT waiting: the others closed at accept.
      assert.ok(unanswered >= CONNECTIONS - LIMIT - 4, `${unanswered} of ${CONNECTIONS} closed unanswered: ${JSON.stringify(got)}`);
      assert.ok(got.some((g) => /^(220|421) /.test(g)), 'the connections that waited are served by the replacement');
      await c.waitFor('one line for the episode', () => linesOf(listenerName).some((l) => /waiting for a worker, closed at accept/.test(String(l.msg))), 30_000);
      assert.equal(linesOf(listenerName).filter((l) => /waiting for a worker, closed at accept/.test(String(l.msg))).length, 1, 'logged once, not per connection');
      // Logged once, but each counted: the metric shows the flood's size.
      const reason = listenerName === 'perip' ? 'per-ip-limit' : 'max-connections';
      const refused = (await scrapeMetrics(c.port('admin'))).get(`postern_smtp_connections_refused_total{listener="${listenerName}",reason="${reason}"}`) ?? 0;
      assert.ok(refused > 0 && refused <= unanswered, `${refused} counted as ${reason}, ${unanswered} closed unanswered`);
    } finally {
      for (const s of sockets) s.destroy();
    }
  });
}

test('a reload that raised maxConnectionsPerIp raises what may wait for a worker too', { timeout: 120_000 }, async () => {
  const sockets: net.Socket[] = [];
  try {
    await readyWorker();
    const before = (await c.cluster()).reload.processes['worker 0']!.digest;
    const file = join(c.dir, 'postern.yaml');
    await writeFile(file, (await readFile(file, 'utf8')).replace(`{ maxConnectionsPerIp: ${LIMIT}, greetingDelayMs: 0 }`, `{ maxConnectionsPerIp: ${CONNECTIONS + 4}, greetingDelayMs: 0 }`));
    await c.waitFor('every process on the edit', async () => {
      const r = (await c.cluster()).reload;
      return r.converged && ['worker 0', 'queue 0'].every((p) => r.processes[p] && r.processes[p]!.digest !== before);
    });
    await stopWorker();
    const outcomes: Array<Promise<string>> = [];
    for (let i = 0; i < CONNECTIONS; i++) {
      const o = await open(c.port('raised'), '127.0.4.2');
      sockets.push(o.socket);
      outcomes.push(o.outcome);
    }
    const got = await Promise.all(outcomes);
    // Only those handed to the stopped worker (MAX_INFLIGHT + 1 at most) go unanswered; the rest waited for its replacement.
    assert.ok(got.filter((g) => g === '').length <= 4, JSON.stringify(got));
    assert.ok(!linesOf('raised').some((l) => /waiting for a worker, closed at accept/.test(String(l.msg))), 'none closed at accept');
  } finally {
    for (const s of sockets) s.destroy();
  }
});

test('roundRobin: a connection from an address that is no trusted proxy, closed by the supervisor, is logged and counted', { timeout: 120_000 }, async () => {
  await readyWorker();
  const { outcome } = await open(c.port('untrusted'), '127.0.0.1');
  assert.equal(await outcome, '', 'closed unanswered');
  await c.waitFor('its line', () => linesOf('untrusted').some((l) => l.stage === 'PROXY' && l.decision === 'reject'));
  // Its reason names the key an operator edits (listeners[].proxyProtocol.trusted), not one the schema refuses.
  const reason = String(linesOf('untrusted').find((l) => l.stage === 'PROXY' && l.decision === 'reject')!.reason);
  assert.equal(reason, 'listeners.proxyProtocol.trusted: not a trusted proxy');
  const refused = (await scrapeMetrics(c.port('admin'))).get('postern_smtp_connections_refused_total{listener="untrusted",reason="untrusted-proxy"}');
  assert.equal(refused, 1);
});

// Last: the worker it stops is let go on, not waited for to be replaced.
test('a policy service\'s connections waiting for a worker: over its maxConnections closed at accept, not queued before every listener\'s', { timeout: 120_000 }, async () => {
  const sockets: net.Socket[] = [];
  let paused: number | undefined;
  try {
    paused = await stopWorker();
    let closed = 0;
    for (let i = 0; i < CONNECTIONS; i++) {
      const o = await open(c.port('policy'), '127.0.0.1');
      sockets.push(o.socket);
      void o.outcome.then(() => closed++);
    }
    await c.waitFor('the flood to be logged', () => c.logs.some((l) => /too many connections to this policy service waiting for a worker/.test(String(l.msg))), 30_000);
    // At most MAX_INFLIGHT + 1 handed to the stopped worker, LIMIT waiting: the others closed at accept.
    await c.waitFor('the others closed', () => closed >= CONNECTIONS - LIMIT - 4, 30_000);
    assert.equal(c.logs.filter((l) => /too many connections to this policy service/.test(String(l.msg))).length, 1, 'logged once, not per connection');
  } finally {
    // Done before the supervisor took the worker for hung: still stopped, it would hold the server's stop for the
    // 30 s the supervisor gives a child before SIGKILL.
    if (paused) try { process.kill(paused, 'SIGCONT'); } catch { /* replaced meanwhile */ }
    for (const s of sockets) s.destroy();
  }
});
