/**
 * The two-node layout of docs/scaling.md, for real: HAProxy (Debian's, `mode tcp`) in front of two
 * `postern serve` processes that share one Redis. HAProxy sends PROXY v2 (and v1 on a second frontend);
 * the client binds 127.0.0.2 (or .3), so the address it has differs from HAProxy's (127.0.0.1), the only
 * one the listeners trust. Proves: scripts see the client's address, the per-address auth-failure limit
 * and the per-identity limit hold over both nodes, a direct connection from an untrusted address is
 * closed, and STARTTLS and implicit TLS both work through the balancer.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile, readFile } from 'node:fs/promises';
import net from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { eventually, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { needs } from '../helpers/example.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { proxyV2 } from '../helpers/proxy-header.ts';
import { freePort } from '../helpers/free-port.ts';
import { HAPROXY, haproxyStats as statsAt } from '../helpers/haproxy.ts';
import { UNHURRIED_LIMITS } from '../helpers/unhurried-limits.ts';

const opts = needs('redis-server', HAPROXY);
const MAIN = new URL('../../engine/cli/main.ts', import.meta.url).pathname;
const PASSWORD = 'alice-Password-1';
/** alice for the per-identity limit; one user per session elsewhere, so that limit stays out of the way. */
const USERS = ['alice@example.com', ...Array.from({ length: 12 }, (_, i) => `user${i}@example.com`)];
let nextUser = 1;
const freshUser = (): string => USERS[nextUser++]!;

/** The client address a script sees, in the MAIL FROM reply. */
const MAILFROM = `import type { MailFromContext } from "postern";
export default function (ctx: MailFromContext) {
  return accept({ text: "Sender ok, client " + ctx.connection.remoteAddress });
}
`;

interface Node { name: string; child: ChildProcess; ports: Map<string, number>; output: () => string }


async function startNode(dir: string, name: string, redisUrl: string, pki: TestPki): Promise<Node> {
  await mkdir(join(dir, 'scripts'), { recursive: true });
  await writeFile(join(dir, 'scripts', 'mailfrom.ts'), MAILFROM);
  const hash = await hashPassword(PASSWORD);
  await writeFile(join(dir, 'users'), USERS.map((u) => `${u}:${hash}\n`).join(''));
  const tls = (mode: string) => `{ mode: ${mode}, cert: ${pki.server.cert}, key: ${pki.server.key} }`;
  const common = `auth: { mechanisms: [PLAIN], required: true }
    proxyProtocol: { trusted: [127.0.0.1/32] }
    limits: { greetingDelayMs: 0, messagesPerIdentity: { count: 3, windowSeconds: 3600 }, authFailuresPerIp: 3, maxConnectionsPerIp: 2 }`;
  // The limits test servers get (unhurried-limits.ts): with 200 ms a Redis round trip, a node or Redis descheduled a
  // moment on a loaded machine failed a count closed (454 to AUTH, 421 at connect) in sessions the test expects served.
  await writeFile(join(dir, 'postern.yaml'), `
hostname: ${name}
dataDir: ./data
scripts: ./scripts
users: ./users
localDomains: [example.net]
workers: 1
store:
  redis: { url: "${redisUrl}", keyPrefix: "two-nodes:", timeoutMs: ${UNHURRIED_LIMITS.redisTimeoutMs} }
sandbox: { timeoutMs: ${UNHURRIED_LIMITS.sandboxTimeoutMs} }
listeners:
  - name: submission
    listen: 127.0.0.1:0
    tls: ${tls('starttls')}
    ${common}
  - name: submissions
    listen: 127.0.0.1:0
    tls: ${tls('implicit')}
    ${common}
`);
  const child = spawn(process.execPath, [MAIN, 'serve', '--config', join(dir, 'postern.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; });
  child.stderr!.on('data', (d: Buffer) => { out += d; });
  const ports = new Map<string, number>();
  await eventually(async () => {
    if (child.exitCode !== null) throw new Error(`postern exited:\n${out}`);
    for (const m of out.matchAll(/"listener":"(\w+)","address":"127\.0\.0\.1:(\d+)"[^\n]*"msg":"listening"/g)) ports.set(m[1]!, Number(m[2]));
    return ports.size === 2 && out.includes('supervisor started');
  }, `postern ${name} listening`, 60_000); // a hang guard: a loaded machine starts slowly
  return { name, child, ports, output: () => out };
}

async function startHaproxy(dir: string, nodes: Node[]): Promise<{ child: ChildProcess; ports: Record<'v2' | 'v1' | 'tls' | 'checked', number> }> {
  const ports = { v2: await freePort(), v1: await freePort(), tls: await freePort(), checked: await freePort() };
  const backend = (name: string, listener: string, send: string) => `backend ${name}
  balance roundrobin
${nodes.map((n) => `  server ${n.name} 127.0.0.1:${n.ports.get(listener)} ${send}`).join('\n')}
`;
  const cfg = `global
  maxconn 200
  stats socket ${join(dir, 'haproxy.sock')} level user
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend submission_v2
  bind 127.0.0.1:${ports.v2}
  default_backend submission_v2
frontend submission_v1
  bind 127.0.0.1:${ports.v1}
  default_backend submission_v1
frontend submissions
  bind 127.0.0.1:${ports.tls}
  default_backend submissions
${backend('submission_v2', 'submission', 'send-proxy-v2')}
${backend('submission_v1', 'submission', 'send-proxy')}
${backend('submissions', 'submissions', 'send-proxy-v2')}
frontend checked
  bind 127.0.0.1:${ports.checked}
  default_backend checked
backend checked
  option smtpchk EHLO haproxy.test
${nodes.map((n) => `  server ${n.name} 127.0.0.1:${n.ports.get('submission')} send-proxy-v2 check check-send-proxy inter 300`).join('\n')}
backend checked_tls
  option smtpchk EHLO haproxy.test
${nodes.map((n) => `  server ${n.name} 127.0.0.1:${n.ports.get('submissions')} send-proxy-v2 check check-send-proxy check-ssl verify none inter 300`).join('\n')}
`;
  await writeFile(join(dir, 'haproxy.cfg'), cfg);
  const child = spawn(HAPROXY, ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; });
  child.stderr!.on('data', (d: Buffer) => { out += d; });
  await eventually(async () => {
    if (child.exitCode !== null) throw new Error(`haproxy exited:\n${out}`);
    // Its stats socket answers once the frontends are bound (a probe connection would reach a node).
    return (await haproxyStats()).some((r) => r.pxname === 'submission_v2');
  }, 'haproxy listening');
  return { child, ports };
}

let redis: TestRedis;
let pki: TestPki;
let ca: string;
let dir: string;
let nodes: Node[] = [];
let haproxy: Awaited<ReturnType<typeof startHaproxy>> | null = null;

before(async () => {
  if (opts.skip) return;
  dir = await mkdtemp(join(tmpdir(), 'postern-haproxy-'));
  pki = await makeTestPki(join(dir, 'pki'));
  ca = await readFile(pki.ca.cert, 'utf8');
  redis = await startRedis();
  nodes = await Promise.all(['node-a', 'node-b'].map(async (n) => startNode(join(dir, n), n, redis.url, pki)));
  haproxy = await startHaproxy(dir, nodes);
});

after(async () => {
  haproxy?.child.kill('SIGTERM');
  for (const n of nodes) {
    n.child.kill('SIGTERM');
    if (n.child.exitCode === null) await once(n.child, 'exit');
  }
  await redis?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A session through HAProxy from `client`; `port`: one of its frontends. Resolves with the node's name and the client. */
async function session(port: number, client: string, tls: 'starttls' | 'implicit' = 'starttls'): Promise<{ node: string; c: SmtpTestClient }> {
  const c = await SmtpTestClient.connect(port, { localAddress: client, ...(tls === 'implicit' ? { implicitTls: { ca } } : {}) });
  const ehlo = await c.hello(tls === 'starttls' ? { starttls: { ca } } : {});
  const node = /^250-(node-[ab]) /.exec(ehlo.text)?.[1];
  if (!node) { c.destroy(); throw new Error(`unexpected EHLO reply: ${ehlo.text}`); }
  return { node, c };
}

async function auth(c: SmtpTestClient, user: string, password = PASSWORD): Promise<string> {
  return (await c.command(`AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`)).text;
}

test('through HAProxy (v2 and v1): both nodes serve, and scripts see the client address, not the balancer', opts, async () => {
  const seen = new Set<string>();
  for (const [frontend, client] of [['v2', '127.0.0.2'], ['v2', '127.0.0.2'], ['v1', '127.0.0.3'], ['v1', '127.0.0.3']] as const) {
    const { node, c } = await session(haproxy!.ports[frontend], client);
    seen.add(node);
    try {
      const user = freshUser();
      assert.equal(await auth(c, user), '235 2.7.0 Authentication successful');
      assert.equal((await c.command(`MAIL FROM:<${user}>`)).text, `250 2.1.0 Sender ok, client ${client}`);
    } finally {
      await c.quit();
    }
  }
  assert.deepEqual([...seen].sort(), ['node-a', 'node-b'], 'round robin reached both nodes');
});

test('implicit TLS through HAProxy (v2): the handshake reaches the node that got the header', opts, async () => {
  const seen = new Set<string>();
  for (let i = 0; i < 2; i++) {
    const { node, c } = await session(haproxy!.ports.tls, '127.0.0.2', 'implicit');
    seen.add(node);
    try {
      const user = freshUser();
      assert.equal(await auth(c, user), '235 2.7.0 Authentication successful');
      assert.equal((await c.command(`MAIL FROM:<${user}>`)).text, '250 2.1.0 Sender ok, client 127.0.0.2');
    } finally {
      await c.quit();
    }
  }
  assert.equal(seen.size, 2);
});

test('the per-identity limit holds over both nodes', opts, async () => {
  const replies: string[] = [];
  const nodesUsed = new Set<string>();
  for (let i = 0; i < 4; i++) {
    const { node, c } = await session(haproxy!.ports.v2, '127.0.0.2');
    nodesUsed.add(node);
    try {
      assert.equal(await auth(c, 'alice@example.com'), '235 2.7.0 Authentication successful');
      replies.push((await c.command('MAIL FROM:<alice@example.com>')).text);
    } finally {
      await c.quit();
    }
  }
  assert.equal(nodesUsed.size, 2);
  assert.deepEqual(replies, [...Array(3).fill('250 2.1.0 Sender ok, client 127.0.0.2'), '450 4.7.1 Error: too much mail from alice@example.com, try again later']);
});

test('the per-address auth-failure limit holds over both nodes, keyed by the client, not HAProxy', opts, async () => {
  const nodesUsed = new Set<string>();
  for (let i = 0; i < 3; i++) {
    const { node, c } = await session(haproxy!.ports.v2, '127.0.0.4');
    nodesUsed.add(node);
    try {
      assert.equal(await auth(c, 'user12@example.com', 'wrong-Password-9'), '535 5.7.8 Authentication credentials invalid');
    } finally {
      await c.quit();
    }
  }
  assert.equal(nodesUsed.size, 2);
  // Both nodes logged the failures under the client's address.
  for (const n of nodes) await eventually(async () => /"ip":"127\.0\.0\.4"[^\n]*"msg":"authentication failed"/.test(n.output()), `${n.name} logged the failures`);
  // 127.0.0.4 is refused at connect now on both nodes; another client behind the same balancer is not.
  for (let i = 0; i < 2; i++) {
    const c = await SmtpTestClient.connect(haproxy!.ports.v2, { localAddress: '127.0.0.4' });
    assert.match((await c.read()).text, /^421 4\.7\.0 Too many authentication failures, try again later/);
    c.destroy();
  }
  const { c } = await session(haproxy!.ports.v1, '127.0.0.5');
  try {
    assert.equal(await auth(c, freshUser()), '235 2.7.0 Authentication successful');
  } finally {
    await c.quit();
  }
});

test('a PROXY header from an untrusted address is not taken: the connection is closed', opts, async () => {
  for (const n of nodes) {
    for (const listener of ['submission', 'submissions']) {
      const s = net.connect({ port: n.ports.get(listener)!, host: '127.0.0.1', localAddress: '127.0.0.2' });
      let got = '';
      s.on('data', (d: Buffer) => { got += d.toString(); });
      s.on('error', () => undefined); // a reset: closed before our bytes were read
      const closed = new Promise((r) => s.once('close', r));
      s.once('connect', () => s.write('PROXY TCP4 192.0.2.1 127.0.0.1 1000 587\r\n'));
      await closed;
      assert.equal(got, '', `${n.name} ${listener} wrote nothing`);
    }
    await eventually(async () => /"peer":"127\.0\.0\.2","msg":"PROXY protocol: connection from an untrusted address closed"/.test(n.output()), `${n.name} logged the refusal`);
  }
});

test('maxConnectionsPerIp under serve: the worker takes the slot of the client the header names from the supervisor', opts, async () => {
  // As a balancer would (from 127.0.0.1, trusted), straight to node A: two clients' connections, one of them twice over.
  const port = nodes[0]!.ports.get('submission')!;
  const open: SmtpTestClient[] = [];
  for (let i = 0; i < 2; i++) {
    const c = await SmtpTestClient.connect(port, { proxyHeader: proxyV2('192.0.2.60', 2000 + i) });
    assert.match((await c.read()).text, /^220 node-a /);
    open.push(c);
  }
  const over = await SmtpTestClient.connect(port, { proxyHeader: proxyV2('192.0.2.60', 2002) });
  assert.equal((await over.read()).text, '421 4.7.0 Too many connections from your address');
  over.destroy();
  const other = await SmtpTestClient.connect(port, { proxyHeader: proxyV2('192.0.2.61', 2003) });
  assert.match((await other.read()).text, /^220 node-a /);
  for (const c of [...open, other]) await c.quit();
  // The slots go back when the sessions close.
  await eventually(async () => {
    const again = await SmtpTestClient.connect(port, { proxyHeader: proxyV2('192.0.2.60', 2004) });
    const ok = (await again.read()).code === 220;
    await again.quit();
    return ok;
  }, 'slots given back');
});

/** HAProxy's `show stat` over its stats socket. */
const haproxyStats = (): Promise<Array<Record<string, string>>> => statsAt(join(dir, 'haproxy.sock'));

test('HAProxy\'s SMTP health checks, sent with a PROXY header (check-send-proxy, check-ssl on implicit TLS), find both nodes up', opts, async () => {
  await eventually(async () => {
    const servers = (await haproxyStats()).filter((r) => (r.pxname === 'checked' || r.pxname === 'checked_tls') && r.svname?.startsWith('node-'));
    return servers.length === 4 && servers.every((r) => r.status === 'UP' && r.check_status === 'L7OK');
  }, 'both nodes checked L7OK, on the STARTTLS port and (check-ssl) on the implicit-TLS port');
  // The checks are the balancer's own connections: taken, never refused as untrusted or malformed.
  for (const n of nodes) assert.doesNotMatch(n.output(), /"msg":"PROXY protocol: connection closed"/);
});
