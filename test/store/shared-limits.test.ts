/**
 * Two Postern processes (two configurations, two ports) with one Redis, one over TCP and one over its Unix
 * socket (`unix:///…`, the same-host layout): the built-in per-identity limit
 * and a script's rate() hold across both. Redis stopped mid-run: what needs the store refuses (451 at
 * MAIL FROM, 454 at AUTH), never an accept; a listener that uses no store still takes mail; restarted:
 * mail flows again.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from 'redis';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { eventually, needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';

const opts = needsRedis();
const MAIN = new URL('../../engine/cli/main.ts', import.meta.url).pathname;

const RCPTTO = `import type { RcptToContext } from "postern";
export default async function (ctx: RcptToContext) {
  const r = await rate("rcpt:" + ctx.address.address, 2, 3600);
  if (!r.allowed) return defer("Too many messages to " + ctx.address.address, { code: 450, enhanced: "4.7.1" });
}
`;

interface Server { child: ChildProcess; port: number; inboundPort: number; output: () => string }

async function startServer(dir: string, redisUrl: string): Promise<Server> {
  await mkdir(join(dir, 'scripts'), { recursive: true });
  await mkdir(join(dir, 'no-scripts'), { recursive: true }); // a named folder must exist; empty, it holds no scripts
  await writeFile(join(dir, 'scripts', 'rcptto.ts'), RCPTTO);
  await writeFile(join(dir, 'users'), `alice@example.com:${await hashPassword('alice-Password-1')}\nbob@example.com:${await hashPassword('bob-Password-1')}\n`);
  // One worker each: the limits are shared across the two servers (its default, a worker per core, added nothing here).
  await writeFile(join(dir, 'postern.yaml'), `
workers: 1
dataDir: ./data
scripts: ./scripts
users: ./users
localDomains: [example.net]
store:
  redis: { url: "${redisUrl}", keyPrefix: "shared-test:", timeoutMs: 1000 }
sandbox: { timeoutMs: 2000 }
listeners:
  - name: submit
    listen: 127.0.0.1:0
    auth: { mechanisms: [PLAIN], required: true }
    limits: { greetingDelayMs: 0, messagesPerIdentity: { count: 3, windowSeconds: 3600 }, authFailuresPerIp: 3 }
  - name: inbound
    listen: 127.0.0.1:0
    scripts: ./no-scripts
    limits: { greetingDelayMs: 0 }
`);
  const child = spawn(process.execPath, [MAIN, 'serve', '--config', join(dir, 'postern.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; });
  child.stderr!.on('data', (d: Buffer) => { out += d; });
  const ports = new Map<string, number>();
  await eventually(async () => {
    for (const m of out.matchAll(/"listener":"(\w+)","address":"127\.0\.0\.1:(\d+)"[^\n]*"msg":"listening"/g)) ports.set(m[1]!, Number(m[2]));
    if (child.exitCode !== null) throw new Error(`postern exited:\n${out}`);
    return ports.size === 2;
  }, `postern listening in ${dir}`, 60_000); // a start, not a speed test: as startCluster's (20 s ran out on a loaded machine)
  return { child, port: ports.get('submit')!, inboundPort: ports.get('inbound')!, output: () => out };
}

async function login(port: number, user: string): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(port);
  await c.hello();
  const password = user === 'alice@example.com' ? 'alice-Password-1' : 'bob-Password-1';
  const r = await c.command(`AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`);
  if (r.code !== 235) c.destroy(); // an open session would hold the server's stop for its idle timeout
  assert.equal(r.code, 235, r.text);
  return c;
}

/** The final reply, or the RCPT refusal (the limits refuse there): callers assert which. */
async function send(port: number, user: string, rcpt: string): Promise<string> {
  const c = await login(port, user);
  try {
    return (await c.sendMail(user, [rcpt], undefined, { refusedOk: true })).text;
  } finally {
    await c.quit();
  }
}

let redis: TestRedis;
let dirs: string[] = [];
let servers: Server[] = [];

before(async () => {
  if (opts.skip) return;
  redis = await startRedis();
  dirs = [await mkdtemp(join(tmpdir(), 'postern-shared-a-')), await mkdtemp(join(tmpdir(), 'postern-shared-b-'))];
  servers = await Promise.all(dirs.map((d, i) => startServer(d, i === 0 ? redis.url : redis.unixUrl)));
  // A server's Redis connection may still be coming up: wait until a session gets through.
  for (const s of servers) {
    await eventually(async () => {
      const c = await SmtpTestClient.connect(s.port);
      try { return (await c.read()).code === 220; } finally { c.socket.destroy(); }
    }, 'store connected');
  }
});

after(async () => {
  for (const s of servers) {
    s.child.kill('SIGTERM');
    if (s.child.exitCode === null) await new Promise((r) => s.child.once('exit', r));
  }
  await redis?.stop();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test('one per-identity limit and one script rate() across two servers sharing Redis', opts, async () => {
  const [a, b] = servers as [Server, Server];
  assert.match(await send(a.port, 'alice@example.com', 'x@example.net'), /^250 2\.0\.0 Ok: queued as/);
  assert.match(await send(b.port, 'alice@example.com', 'x@example.net'), /^250 2\.0\.0 Ok: queued as/);
  // The script's rate() for x@example.net (2) is used up on the two servers together.
  assert.equal(await send(a.port, 'alice@example.com', 'x@example.net'), '450 4.7.1 Too many messages to x@example.net');
  // Alice's third MAIL FROM was counted (the limit counts MAIL FROMs); the fourth is refused, on either server.
  assert.equal(await send(b.port, 'alice@example.com', 'y@example.net'), '450 4.7.1 Error: too much mail from alice@example.com, try again later');
  assert.equal(await send(a.port, 'alice@example.com', 'y@example.net'), '450 4.7.1 Error: too much mail from alice@example.com, try again later');
  // Another identity has its own count.
  assert.match(await send(b.port, 'bob@example.com', 'y@example.net'), /^250 2\.0\.0 Ok: queued as/);
});

test('failed AUTHs from one address are counted over both servers (limits.authFailuresPerIp)', opts, async () => {
  const [a, b] = servers as [Server, Server];
  const fail = async (port: number): Promise<string> => {
    const c = await SmtpTestClient.connect(port);
    try {
      await c.hello();
      return (await c.command(`AUTH PLAIN ${Buffer.from('\0alice@example.com\0wrong-Password-9').toString('base64')}`)).text;
    } finally {
      await c.quit();
    }
  };
  assert.equal(await fail(a.port), '535 5.7.8 Authentication credentials invalid');
  assert.equal(await fail(b.port), '535 5.7.8 Authentication credentials invalid');
  assert.equal(await fail(a.port), '535 5.7.8 Authentication credentials invalid');
  // The third failure was on A; B refuses this address now too.
  const c = await SmtpTestClient.connect(b.port);
  assert.equal((await c.read()).text, '421 4.7.0 Too many authentication failures, try again later');
  c.socket.destroy();
  // Let the address in again for the next test.
  const raw = createClient({ url: redis.url });
  await raw.connect();
  await raw.del('shared-test:limit:authfail:127.0.0.1');
  await raw.close();
});

test('Redis stopped: what needs the store refuses (451 at MAIL FROM, 454 at AUTH), the rest goes on; restarted: mail flows again', opts, async () => {
  const [a, b] = servers as [Server, Server];
  const early = await login(a.port, 'bob@example.com');
  await redis.stop();
  try {
    // The built-in limit cannot count: refused.
    assert.equal((await early.command('MAIL FROM:<bob@example.com>')).text, '451 4.3.0 Temporary local problem, try again later');
    // New connections are greeted (the early auth-failure refusal is skipped), but AUTH cannot be counted: refused.
    const c = await SmtpTestClient.connect(b.port);
    await c.hello();
    const r = await c.command(`AUTH PLAIN ${Buffer.from('\0alice@example.com\0alice-Password-1').toString('base64')}`);
    assert.equal(r.text, '454 4.7.0 Temporary authentication failure, try again later');
    await c.quit();
    // A listener with no store-backed limit and no script takes mail as before.
    const inbound = await SmtpTestClient.connect(a.inboundPort);
    await inbound.hello();
    assert.match((await inbound.sendMail('someone@example.org', ['x@example.net'])).text, /^250 2\.0\.0 Ok: queued as/);
    await inbound.quit();
  } finally {
    await early.quit();
  }
  await redis.start(); // empty: every count starts again
  await eventually(async () => /^250 2\.0\.0 Ok: queued as/.test(await send(a.port, 'alice@example.com', 'z@example.net')), 'mail flows again through server A');
  // Each server's client reconnects on its own schedule: B may come back a little after A.
  await eventually(async () => /^250 2\.0\.0 Ok: queued as/.test(await send(b.port, 'alice@example.com', 'z@example.net')), 'mail flows again through server B');
  assert.match(a.output(), /store: Redis unreachable/);
});
