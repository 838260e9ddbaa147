/**
 * limits.connectionsPerIpInStore for real: two `postern serve` processes (two configurations, two ports)
 * sharing one redis-server hold one per-address connection limit together. Proves: the connection over
 * the limit is refused on either node with 421 4.7.0, a closed connection frees a slot for the other node,
 * the slots of a killed node come back once their leases expire, a Redis outage refuses new connections
 * on that listener only (421 4.7.0, fail closed) while open sessions and other listeners go on, and
 * connections are taken again once Redis is back.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from 'redis';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { eventually, needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';

const opts = needsRedis();
const MAIN = new URL('../../engine/cli/main.ts', import.meta.url).pathname;
const LIMIT = 3;
// Renewed every third of it: long enough that a loaded machine's late renewal does not let a lease lapse.
const LEASE_SECONDS = 5;
const TOO_MANY = '421 4.7.0 Too many connections from your address';

interface Node { name: string; child: ChildProcess; mx: number; plain: number; output: () => string }

async function startNode(dir: string, name: string, redisUrl: string): Promise<Node> {
  await mkdir(join(dir, 'scripts'), { recursive: true });
  await writeFile(join(dir, 'postern.yaml'), `
hostname: ${name}
dataDir: ./data
scripts: ./scripts
localDomains: [example.net]
workers: 1
store:
  redis: { url: "${redisUrl}", keyPrefix: "conn-slots:", timeoutMs: 1000, connectionLeaseSeconds: ${LEASE_SECONDS} }
sandbox: { timeoutMs: 2000 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: ${LIMIT}, connectionsPerIpInStore: true }
  - name: plain
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: ${LIMIT} }
`);
  // A process group of its own: killing the node kills its supervisor and its workers together.
  const child = spawn(process.execPath, [MAIN, 'serve', '--config', join(dir, 'postern.yaml')], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; });
  child.stderr!.on('data', (d: Buffer) => { out += d; });
  const ports = new Map<string, number>();
  await eventually(async () => {
    if (child.exitCode !== null) throw new Error(`postern exited:\n${out}`);
    for (const m of out.matchAll(/"listener":"(\w+)","address":"127\.0\.0\.1:(\d+)"[^\n]*"msg":"listening"/g)) ports.set(m[1]!, Number(m[2]));
    return ports.size === 2 && out.includes('supervisor started');
  }, `postern ${name} listening`, 60_000); // a hang guard: a loaded machine starts slowly
  return { name, child, mx: ports.get('mx')!, plain: ports.get('plain')!, output: () => out };
}

let redis: TestRedis;
let dir: string;
let nodes: Node[] = [];
const clients = new Set<SmtpTestClient>();
let raw: ReturnType<typeof createClient>;

/**
 * The leases in Redis for the mx listener and 127.0.0.1. A client's QUIT is answered before the server has
 * given the slot back: the test waits for this count instead of for time.
 */
const leases = async (): Promise<number> => raw.zCard('conn-slots:limit:conn:mx:127.0.0.1');
const leasesBecome = (n: number, what: string) => eventually(async () => await leases() === n, `${n} leases: ${what}`);

/** A connection and its first reply (the greeting, or the refusal); refused ones are closed. */
async function connect(port: number): Promise<{ text: string; c: SmtpTestClient }> {
  const c = await SmtpTestClient.connect(port);
  const { text } = await c.read();
  if (text.startsWith('220 ')) clients.add(c); else c.destroy();
  return { text, c };
}
async function close(c: SmtpTestClient): Promise<void> {
  clients.delete(c);
  await c.quit();
}

before(async () => {
  if (opts.skip) return;
  dir = await mkdtemp(join(tmpdir(), 'postern-conn-slots-'));
  redis = await startRedis();
  raw = createClient({ url: redis.url });
  raw.on('error', () => undefined); // the outage test stops Redis under it
  await raw.connect();
  nodes = await Promise.all(['node-a', 'node-b'].map(async (n) => startNode(join(dir, n), n, redis.url)));
  // Each node's Redis connection may still be coming up: wait until a session gets through on each.
  for (const n of nodes) {
    await eventually(async () => {
      const { text, c } = await connect(n.mx);
      if (clients.has(c)) await close(c);
      return text.startsWith(`220 ${n.name} `);
    }, `${n.name} connected to Redis`, 60_000);
  }
  await leasesBecome(0, 'the probes closed');
});

after(async () => {
  for (const c of clients) c.destroy();
  raw?.destroy();
  for (const n of nodes) {
    if (n.child.exitCode !== null || n.child.signalCode !== null) continue;
    n.child.kill('SIGTERM');
    await once(n.child, 'exit');
  }
  await redis?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('one per-address limit over two nodes; a closed connection frees a slot on the other node; a killed node\'s slots come back after their lease', opts, async () => {
  const [a, b] = nodes as [Node, Node];
  const onA = [(await connect(a.mx)), (await connect(a.mx))];
  const onB = [(await connect(b.mx))];
  for (const { text } of [...onA, ...onB]) assert.match(text, /^220 node-[ab] /);
  // Three held over both nodes: the fourth is refused on either (B holds only one itself).
  assert.equal((await connect(b.mx)).text, TOO_MANY);
  assert.equal((await connect(a.mx)).text, TOO_MANY);
  // A listener without the option counts per node only.
  const plain = await connect(b.plain);
  assert.match(plain.text, /^220 node-b /);
  await close(plain.c);
  // One closed on A: B may take it.
  await close(onA.pop()!.c);
  await leasesBecome(2, 'one closed on A');
  await eventually(async () => {
    const next = await connect(b.mx);
    if (next.text.startsWith('220 ')) onB.push(next);
    return next.text.startsWith('220 node-b ');
  }, 'the slot closed on A taken on B');
  assert.equal((await connect(a.mx)).text, TOO_MANY, 'A (one open) sees B\'s two');
  // B dies with two slots: nobody gives them back, they expire after the lease time.
  process.kill(-b.child.pid!, 'SIGKILL');
  await once(b.child, 'exit');
  for (const { c } of onB) clients.delete(c);
  await eventually(async () => {
    const next = await connect(a.mx);
    if (next.text.startsWith('220 ')) onA.push(next);
    return onA.length === LIMIT;
  }, 'B\'s slots expired and taken on A', 30_000);
  assert.equal((await connect(a.mx)).text, TOO_MANY);
  for (const { c } of onA) await close(c);
  await leasesBecome(0, 'all closed');
});

test('Redis stopped: new connections to that listener get 421 4.7.0 (fail closed), open sessions and other listeners go on; restarted: taken again', opts, async () => {
  const a = nodes[0]!;
  // The slots of the last test's connections go back to node A's supervisor with its worker's next message
  // (within its heartbeat, later on a loaded machine): until then its own count may still refuse.
  let open: { text: string; c: SmtpTestClient } | null = null;
  await eventually(async () => {
    const next = await connect(a.mx);
    if (next.text.startsWith('220 ')) open = next;
    return open !== null;
  }, 'a connection to node A taken');
  assert.match(open!.text, /^220 node-a /);
  await redis.stop();
  assert.equal((await connect(a.mx)).text, '421 4.7.0 Connection limit cannot be checked, try again later');
  assert.equal((await open!.c.command('NOOP')).code, 250, 'a session already open goes on');
  const plain = await connect(a.plain);
  assert.match(plain.text, /^220 node-a /);
  await close(plain.c);
  await redis.start();
  await eventually(async () => {
    const next = await connect(a.mx);
    if (clients.has(next.c)) await close(next.c);
    return next.text.startsWith('220 node-a ');
  }, 'connections taken again once Redis is back');
  // The session that stayed open through the outage is counted again (its lease renewed into the empty Redis).
  await leasesBecome(1, 'the renewed lease of the session open through the outage');
  await close(open!.c);
  await leasesBecome(0, 'closed');
  assert.match(a.output(), /"decision":"defer","stage":"CONNECT".*"reason":"limits\.connectionsPerIpInStore: store unavailable \(fail closed\)"/);
});
