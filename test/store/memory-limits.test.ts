/**
 * Without `store.redis`: the built-in per-identity limit and scripts' rate() count in the server's memory;
 * sessions without an identity are not limited. And the store's configuration checks.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { parseConfig } from '../../engine/config/load-config.ts';
import { MemoryCounterStore } from '../../engine/store/index.ts';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const CONFIG = `
users: ./users
localDomains: [example.net]
listeners:
  - name: submit
    listen: 127.0.0.1:0
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, messagesPerIdentity: { count: 2, windowSeconds: 600 } }
`;

async function login(port: number): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(port);
  await c.hello();
  assert.equal((await c.command(`AUTH PLAIN ${Buffer.from('\0carol@example.com\0carol-Password-1').toString('base64')}`)).code, 235);
  return c;
}

test('a store given to startPostern (a multi-process server\'s shared memory) is what two servers count in', async () => {
  const shared = new MemoryCounterStore();
  const files = { users: `carol@example.com:${await hashPassword('carol-Password-1')}\n` };
  const servers = [await startTestServer({ config: CONFIG, files, memoryStore: shared }), await startTestServer({ config: CONFIG, files, memoryStore: shared })];
  try {
    const replies = [];
    for (const s of [...servers, servers[0]!]) {
      const c = await login(s.port('submit'));
      replies.push((await c.command('MAIL FROM:<carol@example.com>')).text);
      await c.quit();
    }
    assert.deepEqual(replies, ['250 2.1.0 Accepted', '250 2.1.0 Accepted', '450 4.7.1 Error: too much mail from carol@example.com, try again later']);
  } finally {
    for (const s of servers) await s.stop();
  }
  assert.equal((await shared.rate('limit:messages:carol@example.com', 2, 600)).allowed, false); // not closed by the servers
});

test('memory store: limits.messagesPerIdentity per logged-in user (450 4.7.1), no limit without an identity', async () => {
  const server = await startTestServer({
    config: `
users: ./users
localDomains: [example.net]
listeners:
  - name: submit
    listen: 127.0.0.1:0
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, messagesPerIdentity: { count: 2, windowSeconds: 600 } }
`,
    files: { users: `carol@example.com:${await hashPassword('carol-Password-1')}\n` },
  });
  try {
    const session = async (login: boolean): Promise<SmtpTestClient> => {
      const c = await SmtpTestClient.connect(server.port('submit'));
      await c.hello();
      if (login) assert.equal((await c.command(`AUTH PLAIN ${Buffer.from('\0carol@example.com\0carol-Password-1').toString('base64')}`)).code, 235);
      return c;
    };
    const carol = await session(true);
    const mailFrom = async (c: SmtpTestClient): Promise<string> => {
      const r = await c.command('MAIL FROM:<carol@example.com>');
      await c.command('RSET');
      return r.text;
    };
    assert.equal(await mailFrom(carol), '250 2.1.0 Accepted');
    assert.equal(await mailFrom(carol), '250 2.1.0 Accepted');
    assert.equal(await mailFrom(carol), '450 4.7.1 Error: too much mail from carol@example.com, try again later');
    await carol.quit();
    // Another session of the same user: the same count.
    const again = await session(true);
    assert.equal(await mailFrom(again), '450 4.7.1 Error: too much mail from carol@example.com, try again later');
    await again.quit();
    // Inbound mail without a login has no identity and is not counted.
    const anonymous = await session(false);
    for (let i = 0; i < 3; i++) assert.equal(await mailFrom(anonymous), '250 2.1.0 Accepted');
    await anonymous.quit();
    assert.ok(server.logs.some((l) => l.msg === 'messagesPerIdentity: limit reached' && l.identity === 'carol@example.com'));
  } finally {
    await server.stop();
  }
});

test('memory store bounded by store.maxKeys: a script counting thousands of distinct keys is trimmed and logged; a built-in limit keeps its count; at most 200 store operations per call', async () => {
  const server = await startTestServer({
    config: `
users: ./users
localDomains: [example.net]
# every call on an isolate thread: a fast-path attempt stopped at its budget and run again would count twice
sandbox: { timeoutMs: 20000, fastPathMs: 0 }
store: { maxKeys: 1000 }
listeners:
  - name: submit
    listen: 127.0.0.1:0
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, messagesPerIdentity: { count: 2, windowSeconds: 600 } }
`,
    files: { users: `carol@example.com:${await hashPassword('carol-Password-1')}\n` },
    // Five recipients <x>-0 … <x>-4 count 990 keys of x nobody will see again (198 a call: at most 200 store
    // operations per call), with a window of a year; the last then counts a's first again.
    scripts: { 'rcptto.ts': `export default async function (ctx) {
      const local = ctx.address.localPart;
      if (local === 'many') { for (let i = 0; i < 201; i++) await rate('many:' + i, 5, 60); return accept(); }
      const [prefix, part] = local.split('-');
      for (let i = 0; i < 198; i++) await rate(prefix + ':' + (Number(part) * 198 + i), 5, 31000000);
      if (part !== '4') return reject('part ' + part, { code: 550 });
      const first = await rate('a:0', 5, 31000000);
      return reject('count ' + first.count, { code: 550 });
    }` },
  });
  try {
    const carol = await login(server.port('submit'));
    const mail = async (): Promise<string> => (await carol.command('MAIL FROM:<carol@example.com>')).text;
    assert.equal(await mail(), '250 2.1.0 Accepted');
    const count = async (prefix: string): Promise<string> => {
      for (let part = 0; part < 4; part++) assert.equal((await carol.command(`RCPT TO:<${prefix}-${part}@example.net>`)).text, `550 5.7.1 part ${part}`);
      return (await carol.command(`RCPT TO:<${prefix}-4@example.net>`)).text;
    };
    assert.equal(await count('a'), '550 5.7.1 count 2');
    // b's keys made room by dropping the oldest, a's: its first key counts from 0 again.
    assert.equal(await count('b'), '550 5.7.1 count 1');
    // More than 200 store operations in one call: the 201st rejects (uncaught: fail closed).
    assert.equal((await carol.command('RCPT TO:<many@example.net>')).text, '451 4.3.0 Temporary policy failure, try again later');
    await carol.command('RSET');
    assert.equal(await mail(), '250 2.1.0 Accepted');
    await carol.command('RSET');
    // 3000 script keys later, the built-in per-identity count is still there.
    assert.equal(await mail(), '450 4.7.1 Error: too much mail from carol@example.com, try again later');
    await carol.quit();
    assert.ok(server.logs.some((l) => l.level === 40 && /^store: more than 1000 keys in memory; dropped/.test(String(l.msg))), 'the trimming is logged as a warning');
  } finally {
    await server.stop();
  }
});

test('configuration: store.redis.timeoutMs must be below sandbox.timeoutMs; messagesPerIdentity needs both keys', () => {
  const base = 'listeners: [{ name: a, listen: "127.0.0.1:0" }]\n';
  assert.throws(() => parseConfig(`${base}store: { redis: { url: "redis://127.0.0.1:6379", timeoutMs: 100 } }\n`, 'p.yaml', '/tmp'),
    /store\.redis\.timeoutMs.*must be below sandbox\.timeoutMs \(100 ms\)/s);
  assert.throws(() => parseConfig(`${base}store: { redis: { url: "http://127.0.0.1:6379" } }\n`, 'p.yaml', '/tmp'), /expected redis:\/\//);
  const ok = parseConfig(`${base}store: { redis: { url: "redis://127.0.0.1:6379" } }\n`, 'p.yaml', '/tmp').config;
  assert.deepEqual(ok.store.redis, { url: 'redis://127.0.0.1:6379', keyPrefix: 'postern:', timeoutMs: 50, connectionLeaseSeconds: 30 });
  assert.equal(parseConfig(base, 'p.yaml', '/tmp').config.store.redis, undefined);
  assert.throws(() => parseConfig('listeners: [{ name: a, listen: "127.0.0.1:0", limits: { messagesPerIdentity: { count: 5 } } }]\n', 'p.yaml', '/tmp'),
    /windowSeconds/);
});

test('configuration: a store.redis.url the Redis client cannot read is refused by the check, naming the line, without repeating the password', async () => {
  // These passed the check (only the scheme was looked at), and every worker of `postern serve` then died at
  // start on the client's "TypeError: Invalid URL", with no file or line: a password with an unencoded #
  // (common in generated ones) was enough.
  const { createClient } = await import('redis');
  const config = (url: string) => parseConfig(`listeners: [{ name: a, listen: "127.0.0.1:0" }]\nstore:\n  redis: { url: "${url}" }\n`, 'p.yaml', '/tmp');
  for (const [url, why] of [
    ['redis://default:s3cr#et@127.0.0.1:6379', /p\.yaml:3:\d+: store\.redis\.url: not a valid URL .*percent-encoded/],
    ['redis://default:s3cr/et@127.0.0.1:6379', /not a valid URL/],
    ['redis://default:s3cr%zzet@127.0.0.1:6379', /a % in the user name or password/],
    ['redis://127.0.0.1:6379/s3cret', /database number/],
  ] as const) {
    assert.throws(() => createClient({ url }), `the client refuses ${url} too`);
    assert.throws(() => config(url), (err: Error) => why.test(err.message) && !err.message.includes('s3cr'), url);
  }
  for (const url of ['redis://default:s3cr%23et@127.0.0.1:6379/2', 'rediss://:p%40ss@[::1]:6380', 'redis://redis.internal']) {
    assert.equal(config(url).config.store.redis?.url, url);
    createClient({ url }); // not connected: only read
  }
});

test('memory store: connectionsPerIpInStore changes nothing (the server\'s own count), and the start says so', async () => {
  const server = await startTestServer({ config: `
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1, connectionsPerIpInStore: true }
` });
  try {
    const first = await SmtpTestClient.connect(server.port('mx'));
    assert.match((await first.read()).text, /^220 /);
    const second = await SmtpTestClient.connect(server.port('mx'));
    assert.equal((await second.read()).text, '421 4.7.0 Too many connections from your address');
    second.destroy();
    await first.quit();
    assert.ok(server.logs.some((l) => l.listener === 'mx' && /connectionsPerIpInStore has no effect without store\.redis/.test(String(l.msg))), 'warned at start');
  } finally {
    await server.stop();
  }
});
