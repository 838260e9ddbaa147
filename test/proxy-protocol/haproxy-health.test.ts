/**
 * Two `postern serve` nodes behind Debian's HAProxy, on the configuration docs/scaling.md recommends with
 * `/readyz` health checks (read from the page itself, so this proves the docs), sharing one Redis, through
 * the failures an operator meets: a refused reload, a Redis outage, a node killed, a node stopped. Every wait
 * is on HAProxy's own view of its servers (its stats socket) or on the nodes' logs and mail, never on a time.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, writeFile, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { needs } from '../helpers/example.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { proxyV2 } from '../helpers/proxy-header.ts';
import { freePort } from '../helpers/free-port.ts';
import { closed, until } from '../helpers/wait.ts';
import { startCluster, watchServer, deliveryToSink, spooled, type ClusterProcess } from '../helpers/cluster.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { HAPROXY, startHaproxy, type TestHaproxy } from '../helpers/haproxy.ts';

const opts = needs('redis-server', HAPROXY);
const ROOT = new URL('../../', import.meta.url).pathname;
const PASSWORD = 'alice-Password-1';
/** The two nodes, by the names and addresses the docs' HAProxy configuration gives them. */
const NODES = [{ name: 'mx-a', docAddress: '10.0.1.11' }, { name: 'mx-b', docAddress: '10.0.1.12' }] as const;
type NodeName = typeof NODES[number]['name'];
const BACKENDS = ['postern_smtp', 'postern_submission'] as const;

/** The client address a script sees, in the MAIL FROM reply. */
const MAILFROM = `import type { MailFromContext } from "postern";
export default function (ctx: MailFromContext) {
  return accept({ text: "Sender ok, client " + ctx.connection.remoteAddress });
}
`;

/**
 * The HAProxy configuration of docs/scaling.md § Health checks on /readyz, made to run on one machine: the
 * frontends and the nodes on loopback ports, the checks every 200 ms instead of 5 s. Everything else as written.
 */
async function haproxyConfigFromDocs(frontends: { smtp: number; submission: number }, nodes: Map<NodeName, ClusterProcess>): Promise<string> {
  const page = await readFile(join(ROOT, 'docs/scaling.md'), 'utf8');
  const section = page.slice(page.indexOf('### Health checks on `/readyz`'));
  const block = /```haproxy\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(block, 'docs/scaling.md has the HAProxy configuration with /readyz checks');
  const lines = block.split('\n').map((line) => {
    for (const { name, docAddress } of NODES) {
      if (!line.includes(`${docAddress}:`)) continue;
      const node = nodes.get(name)!;
      return line.replace(`${docAddress}:25`, `127.0.0.1:${node.port('mx')}`).replace(`${docAddress}:587`, `127.0.0.1:${node.port('submission')}`)
        .replace('port 9325', `port ${node.port('admin')}`);
    }
    return line;
  });
  const cfg = lines.join('\n').replace('bind :25', `bind 127.0.0.1:${frontends.smtp}`).replace('bind :587', `bind 127.0.0.1:${frontends.submission}`)
    .replace('maxconn 20000', 'maxconn 200').replaceAll('inter 5s', 'inter 200');
  assert.doesNotMatch(cfg, /10\.0\.1\.|bind :|port 9325|inter 5s/, 'every address of the docs was replaced');
  return cfg;
}

let dir: string;
let pki: TestPki;
let ca: string;
let redis: TestRedis;
let sink: Sink;
/** While true the sink defers mail to later@: it stays in the queue of the node that took it. */
let deferLater = true;
const nodes = new Map<NodeName, ClusterProcess>();
let haproxy: TestHaproxy;
const frontends = { smtp: 0, submission: 0 };

async function startNode(name: NodeName): Promise<ClusterProcess> {
  return startCluster({
    config: `
hostname: ${name}
users: ./users
localDomains: [example.net]
workers: 1
sandbox: { timeoutMs: 2000 }
store:
  redis: { url: "${redis.url}", keyPrefix: "lb-health:", timeoutMs: 200 }
admin: { listen: 127.0.0.1:{PORT:admin} }
${deliveryToSink(sink.port, { retrySchedule: [1] })}
listeners:
  - name: mx
    listen: 127.0.0.1:{PORT:mx}
    reverseDns: false
    proxyProtocol: { trusted: [127.0.0.1/32] }
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1 }
  - name: submission
    listen: 127.0.0.1:{PORT:submission}
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    auth: { mechanisms: [PLAIN], required: true }
    proxyProtocol: { trusted: [127.0.0.1/32] }
    limits: { greetingDelayMs: 0, messagesPerIdentity: { count: 100, windowSeconds: 3600 } }
`,
    scripts: { 'mailfrom.ts': MAILFROM },
    files: { users: `alice@example.com:${await hashPassword(PASSWORD)}\n` },
  });
}

/** Start `name` again on its configuration and data directory (after a kill): the same ports, the same spool. */
async function restartNode(name: NodeName): Promise<ClusterProcess> {
  const old = nodes.get(name)!;
  const proc = spawn(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'serve', '--config', join(old.dir, 'postern.yaml')], {
    cwd: old.dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1' },
  });
  const ports = new Map(['mx', 'submission', 'admin'].map((l) => [l, old.port(l)] as const));
  const again = await watchServer(proc, { dir: old.dir, dataDir: old.dataDir, ports });
  nodes.set(name, again);
  return again;
}

before(async () => {
  if (opts.skip) return;
  dir = await mkdtemp(join(tmpdir(), 'postern-lb-health-'));
  pki = await makeTestPki(join(dir, 'pki'));
  ca = await readFile(pki.ca.cert, 'utf8');
  redis = await startRedis();
  sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && deferLater && address.startsWith('later@') ? { code: 451, text: '4.3.0 Try later' } : null) });
  // Both at once; one that started is kept (and stopped after) even if the other failed.
  const started = await Promise.allSettled(NODES.map(({ name }) => startNode(name)));
  started.forEach((r, i) => { if (r.status === 'fulfilled') nodes.set(NODES[i]!.name, r.value); });
  for (const r of started) if (r.status === 'rejected') throw r.reason;
  frontends.smtp = await freePort();
  frontends.submission = await freePort();
  haproxy = await startHaproxy(dir, await haproxyConfigFromDocs(frontends, nodes), 'postern_submission');
  await allUp();
});

after(async () => {
  await haproxy?.stop();
  for (const n of nodes.values()) await n.stop();
  await redis?.stop();
  await sink?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** HAProxy's status of `server` in every backend, e.g. ['UP', 'UP']. */
async function statusOf(server: NodeName, backends: readonly string[] = BACKENDS): Promise<string[]> {
  return Promise.all(backends.map((b) => haproxy.status(b, server)));
}

async function waitStatus(server: NodeName, want: 'UP' | 'DOWN', backends: readonly string[] = BACKENDS): Promise<void> {
  await until(`HAProxy marks ${server} ${want} in ${backends.join(', ')}`, async () => (await statusOf(server, backends)).every((s) => s === want), { timeoutMs: 30_000 });
}

async function allUp(): Promise<void> {
  for (const { name } of NODES) await waitStatus(name, 'UP');
}

/** A session through HAProxy's MX frontend from `client`, greeted; resolves with the node that greeted. */
async function mxSession(client: string): Promise<{ node: NodeName; c: SmtpTestClient }> {
  const c = await SmtpTestClient.connect(frontends.smtp, { localAddress: client });
  const greeting = await c.read();
  const node = /^220 (mx-[ab]) /.exec(greeting.text)?.[1] as NodeName | undefined;
  if (!node) { c.destroy(); throw new Error(`not greeted: ${greeting.text}`); }
  assert.equal((await c.command('EHLO client.example')).code, 250);
  return { node, c };
}

/**
 * A session through HAProxy greeted by `node`: leastconn sends each new one to the node with fewer, so at most
 * one other is opened (and closed) first. Each from its own address, 127.0.0.`firstHost` on.
 */
async function sessionOn(node: NodeName, firstHost: number): Promise<SmtpTestClient> {
  const others: SmtpTestClient[] = [];
  for (;;) {
    const s = await mxSession(`127.0.0.${firstHost + others.length}`);
    if (s.node !== node) { others.push(s.c); continue; }
    for (const c of others) await c.quit();
    return s.c;
  }
}

/** A session through HAProxy's submission frontend from `client`, after STARTTLS and AUTH. */
async function submissionSession(client: string): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(frontends.submission, { localAddress: client });
  await c.hello({ starttls: { ca } });
  assert.equal((await c.command(`AUTH PLAIN ${Buffer.from(`\0alice@example.com\0${PASSWORD}`).toString('base64')}`)).code, 235);
  return c;
}

/** A message over `c`; resolves with its queue id. */
async function send(c: SmtpTestClient, client: string, to = 'user@example.net'): Promise<string> {
  assert.equal((await c.command('MAIL FROM:<sender@example.org>')).text, `250 2.1.0 Sender ok, client ${client}`);
  assert.equal((await c.command(`RCPT TO:<${to}>`)).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  const r = await c.command('Subject: via the balancer\r\n\r\nhello\r\n.');
  const id = /queued as ([0-9a-z]+)/.exec(r.text)?.[1];
  assert.ok(r.code === 250 && id, r.text);
  return id;
}

test('the docs\' /readyz checks find both nodes up, and the PROXY header names the client to scripts, limits and Received on each', opts, async () => {
  // leastconn: the second session goes to the node the first did not.
  const a = await mxSession('127.0.0.2');
  const b = await mxSession('127.0.0.2');
  assert.deepEqual([a.node, b.node].sort(), ['mx-a', 'mx-b']);
  for (const s of [a, b]) await send(s.c, '127.0.0.2');
  // maxConnectionsPerIp 1 on each node, counted for the client, not for HAProxy: a third from 127.0.0.2 is refused, 127.0.0.3 is not.
  const third = await SmtpTestClient.connect(frontends.smtp, { localAddress: '127.0.0.2' });
  assert.equal((await third.read()).text, '421 4.7.0 Too many connections from your address');
  third.destroy();
  await closed(third.socket);
  const other = await mxSession('127.0.0.3');
  for (const s of [a, b, other]) await s.c.quit();
  const got = await sink.waitFor(2);
  for (const node of ['mx-a', 'mx-b']) {
    const message = got.find((m) => m.data.toString().includes(`by ${node} `));
    assert.ok(message, `${node} delivered its message`);
    const received = /^Received: from [^\r]*\r\n(?:\s[^\r]*\r\n)*/m.exec(message.data.toString())?.[0] ?? '';
    assert.match(received, /\[127\.0\.0\.2\]/, `${node}'s Received names the client`);
    assert.doesNotMatch(received, /\[127\.0\.0\.1\]/);
  }
});

test('a PROXY header sent straight to a node from an untrusted address is refused', opts, async () => {
  for (const [name, node] of nodes) {
    const s = net.connect({ port: node.port('mx'), host: '127.0.0.1', localAddress: '127.0.0.2' });
    let got = '';
    s.on('data', (d: Buffer) => { got += d.toString(); });
    s.on('error', () => undefined); // a reset: closed before our bytes were read
    s.once('connect', () => s.write(proxyV2('192.0.2.1', 1000)));
    await closed(s);
    assert.equal(got, '', `${name} wrote nothing`);
    await node.waitFor(`${name} logged the refusal`, () => node.lines.some((l) => l.includes('"peer":"127.0.0.2"') && l.includes('PROXY protocol: connection from an untrusted address closed')));
  }
});

test('a refused reload keeps the node in rotation; a Redis outage takes both out of the submission backend only, and they come back with Redis', opts, async () => {
  const a = nodes.get('mx-a')!;
  await writeFile(join(a.dir, 'scripts', 'mailfrom.ts'), 'export default function (: {\n');
  try {
    await a.waitFor('the reload refused', async () => (await a.cluster()).reload.lastError);
    const ready = await fetch(`http://127.0.0.1:${a.port('admin')}/readyz?listener=submission`);
    assert.equal(ready.status, 200, await ready.text());

    // A submission under way when Redis goes: its node leaves the backend, and the transaction still finishes
    // (HAProxy's `on-marked-down shutdown-sessions` would cut it here, mid-DATA).
    const under = await submissionSession('127.0.0.7');
    assert.equal((await under.command('MAIL FROM:<alice@example.com>')).code, 250);
    assert.equal((await under.command('RCPT TO:<user@example.net>')).code, 250);
    assert.equal((await under.command('DATA')).code, 354);
    under.write('Subject: under way when Redis went\r\n\r\nfirst half');
    await redis.stop();
    for (const { name } of NODES) await waitStatus(name, 'DOWN', ['postern_submission']);
    under.write('second half\r\n.');
    assert.match((await under.read()).text, /^250 2\.0\.0 .*queued as/);
    await under.quit();
    // The MX backend's mail needs no Redis: each node's own answer for it stays 200, and HAProxy kept both in. (A check
    // of HAProxy's may still time out once at its 200 ms on a loaded machine: "UP 1/2" is in; DOWN or a 503 is not.)
    for (const { name } of NODES) {
      const mx = await fetch(`http://127.0.0.1:${nodes.get(name)!.port('admin')}/readyz?listener=mx`);
      assert.equal(mx.status, 200, `${name}: ${await mx.text()}`);
    }
    for (const status of [...await statusOf('mx-a', ['postern_smtp']), ...await statusOf('mx-b', ['postern_smtp'])]) assert.match(status, /^UP\b/);
    const { node, c } = await mxSession('127.0.0.4');
    await c.quit();
    assert.ok(node);

    await redis.start();
    // Back, mx-a with its reload still refused.
    for (const { name } of NODES) await waitStatus(name, 'UP', ['postern_submission']);
    assert.ok((await a.cluster()).reload.lastError, 'mx-a came back while its reload is still refused');
    await (await submissionSession('127.0.0.4')).quit();
  } finally {
    // Also when an assertion above failed: the next tests start this node again, which a broken script would stop.
    await writeFile(join(a.dir, 'scripts', 'mailfrom.ts'), MAILFROM);
  }
  await a.waitFor('the reload made', async () => (await a.cluster()).reload.lastError === null);
});

/** Whether a connection to `port` is refused (nothing listens): one accepted is closed at once. */
function portRefuses(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    s.once('connect', () => { s.destroy(); resolve(false); });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

/**
 * Connects through HAProxy's MX frontend from addresses of `network` (a /24: each connection from the next address)
 * until `done()`: every connection must be greeted by `by` (a client never meets the node that is going). Resolves
 * with how many were. A fresh address each time: maxConnectionsPerIp is 1, and a node may not have seen the last
 * connection from an address closed (HAProxy passes the close on) when the next one comes; on a loaded machine one
 * was refused so, 66 connections into the loop.
 */
async function onlyServedBy(by: NodeName, network: string, done: () => Promise<boolean>): Promise<number> {
  let served = 0;
  do {
    const c = await SmtpTestClient.connect(frontends.smtp, { localAddress: `${network}.${1 + served % 250}` });
    const greeting = await c.read().catch((err: Error) => ({ text: `no greeting: ${err.message.split('\n')[0]}` }));
    assert.match(greeting.text, new RegExp(`^220 ${by} `), `connection ${served + 1} after the other node went`);
    await c.quit();
    served++;
  } while (!await done());
  return served;
}

test('a node killed (SIGKILL of its supervisor) is taken out, clients meet the other node, and the mail it acknowledged is delivered when it is back', opts, async () => {
  // A message mx-a acknowledged, that the next hop defers: in mx-a's queue when it dies.
  const onA = await sessionOn('mx-a', 10);
  const id = await send(onA, onA.socket.localAddress!, 'later@example.net');
  await onA.quit();
  const a = nodes.get('mx-a')!;
  await until('the next hop deferred it once', () => sink.attempts.length > 0 && a.lines.some((l) => l.includes(id) && l.includes('deferred')), { timeoutMs: 30_000 });

  a.proc.kill('SIGKILL');
  // Its worker hears of the supervisor's death and closes the port (what it accepted in that instant gets 421 at its
  // next command). From then until HAProxy marks it down, every client must be sent to mx-b, none refused.
  await until('mx-a\'s port closed', () => portRefuses(a.port('mx')));
  const served = await onlyServedBy('mx-b', '127.0.5', async () => (await statusOf('mx-a')).every((s) => s === 'DOWN'));
  assert.ok(served >= 1);
  await until('mx-a\'s supervisor gone', () => a.proc.signalCode !== null);
  assert.ok((await spooled(a)).has(id), 'the acknowledged message is in mx-a\'s spool');

  deferLater = false;
  await restartNode('mx-a');
  await waitStatus('mx-a', 'UP');
  await until(`the message ${id} delivered by mx-a once it is back`, () => sink.messages.some((m) => m.to.includes('later@example.net')), { timeoutMs: 30_000 });
});

test('a node stopping (SIGTERM) gets no new connection from HAProxy, and its transaction in progress finishes', opts, async () => {
  const onB = await sessionOn('mx-b', 20);
  const client = onB.socket.localAddress!;
  assert.equal((await onB.command('MAIL FROM:<sender@example.org>')).text, `250 2.1.0 Sender ok, client ${client}`);
  assert.equal((await onB.command('RCPT TO:<user@example.net>')).code, 250);
  assert.equal((await onB.command('DATA')).code, 354);
  onB.write('Subject: mid-DATA when the node stops\r\n\r\nfirst half');

  const b = nodes.get('mx-b')!;
  b.proc.kill('SIGTERM');
  await until('mx-b\'s port closed', () => portRefuses(b.port('mx')));
  // A new client goes to mx-a while mx-b's transaction is still under way (it has up to 5 s)...
  await onlyServedBy('mx-a', '127.0.6', async () => true);
  onB.write('second half\r\n.');
  const end = await onB.read();
  assert.match(end.text, /^250 2\.0\.0 .*queued as/, 'the transaction under way when the node stopped was acknowledged');
  // ...and every one until HAProxy's checks mark mx-b down.
  await onlyServedBy('mx-a', '127.0.7', async () => (await statusOf('mx-b')).every((s) => s === 'DOWN'));
  const id = /queued as ([0-9a-z]+)/.exec(end.text)![1]!;
  onB.destroy();
  await until('mx-b stopped', () => b.proc.exitCode !== null, { timeoutMs: 30_000 });
  assert.equal(b.proc.exitCode, 0);
  const delivered = sink.messages.some((m) => m.data.toString().includes('mid-DATA when the node stops'));
  assert.ok(delivered || (await spooled(b)).has(id), 'delivered, or in mx-b\'s spool for its next start');
});
