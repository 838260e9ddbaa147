// /readyz while the Redis store is unreachable, with a real redis-server killed and started again: a listener
// whose every client fails closed on it (limits.connectionRatePerIp: 421 at connect) makes the server not ready,
// under `postern serve` too (the workers hold the Redis connections, the supervisor answers /readyz); a server
// whose mail does not need the store stays ready and says the store is unreachable.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestServer } from '../helpers/postern.ts';
import { startCluster } from '../helpers/cluster.ts';
import { needsRedis, startRedis } from '../helpers/redis-server.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

const curl = promisify(execFile);
const cleanup: Array<() => Promise<void>> = [];
after(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => undefined);
});

type Readyz = { code: string; body: { ready: boolean; checks: Record<string, { ok: boolean; detail?: string }> } };

async function readyz(port: number, query = ''): Promise<Readyz> {
  const { stdout } = await curl('curl', ['-s', '-w', '\n%{http_code}', `http://127.0.0.1:${port}/readyz${query}`]);
  const nl = stdout.lastIndexOf('\n');
  return { code: stdout.slice(nl + 1), body: JSON.parse(stdout.slice(0, nl)) as Readyz['body'] };
}

test('postern serve: Redis down with limits.connectionRatePerIp: every connection 421, /readyz 503 naming the listener (?listener= of another: 200); ready again once Redis is back', { skip: needsRedis().skip, timeout: 120_000 }, async () => {
  const redis = await startRedis();
  cleanup.push(() => redis.stop());
  // One worker: the supervisor's /readyz is still told by another process (the worker holds the Redis connection).
  const c = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
admin: { listen: "127.0.0.1:{PORT:admin}" }
store: { redis: { url: "${redis.url}", timeoutMs: 2000 } }
sandbox: { timeoutMs: 5000 }
listeners:
  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    reverseDns: false
    limits: { greetingDelayMs: 0, connectionRatePerIp: { count: 1000, windowSeconds: 60 } }
  - name: mx
    listen: 127.0.0.1:{PORT:mx}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`,
  });
  cleanup.push(() => c.stop());
  const admin = c.port('admin');
  await until('ready', async () => (await readyz(admin)).code === '200', { timeoutMs: 30_000 });

  await redis.stop();
  const greeting = async (): Promise<string> => {
    const client = await SmtpTestClient.connect(c.port('sub'));
    try {
      return (await client.read()).text;
    } finally {
      client.destroy();
    }
  };
  await until('connections refused', async () => /^421 .*4\.7\.0 Connection rate cannot be checked/.test(await greeting()), { timeoutMs: 30_000, intervalMs: 200 });
  let down: Readyz | undefined;
  await until('/readyz fails', async () => (down = await readyz(admin)).code === '503', { timeoutMs: 30_000, intervalMs: 200 });
  assert.equal(down!.body.checks.store!.ok, false);
  assert.match(String(down!.body.checks.store!.detail), /Redis store is unreachable: listener sub refuses every client by limits\.connectionRatePerIp \(every connection: 421 4\.7\.0\)/);
  // One check per listener, for a load balancer's backend of that port: mx takes mail meanwhile.
  assert.equal((await readyz(admin, '?listener=sub')).code, '503');
  const mx = await readyz(admin, '?listener=mx');
  assert.equal(mx.code, '200', JSON.stringify(mx.body));
  assert.match(String(mx.body.checks.store!.detail), /Redis store is unreachable/);
  const client = await SmtpTestClient.connect(c.port('mx'));
  await client.hello();
  assert.equal((await client.sendMail('a@example.net', ['b@example.test'])).code, 250, 'mx takes mail');
  await client.quit();
  const { stdout: unknown } = await curl('curl', ['-s', '-w', '%{http_code}', `http://127.0.0.1:${admin}/readyz?listener=nope`]);
  assert.match(unknown, /^no listener "nope"\n404$/);

  await redis.start();
  await until('ready again', async () => (await readyz(admin)).code === '200', { timeoutMs: 30_000, intervalMs: 200 });
  assert.match(await greeting(), /^220 /);
});

test('single process: Redis down, no listener needs it for every client: /readyz stays 200 (mail is taken) and says the store is unreachable', { skip: needsRedis().skip, timeout: 60_000 }, async () => {
  const redis = await startRedis();
  cleanup.push(() => redis.stop());
  const s = await startTestServer({
    config: configYaml({ admin: { listen: '127.0.0.1:0' }, localDomains: ['example.test'], store: { redis: { url: redis.url, timeoutMs: 2000 } }, sandbox: { timeoutMs: 5000 }, listeners: [testListener('mx')] }),
  });
  cleanup.push(() => s.stop());
  const admin = s.admin!.address.port;
  assert.equal((await readyz(admin)).body.checks.store!.detail, undefined);
  await redis.stop();
  let seen: Readyz | undefined;
  await until('/readyz says the store is unreachable', async () => (seen = await readyz(admin)).body.checks.store?.detail !== undefined, { timeoutMs: 30_000, intervalMs: 200 });
  assert.equal(seen!.code, '200', JSON.stringify(seen!.body));
  assert.equal(seen!.body.checks.store!.ok, true);
  assert.match(String(seen!.body.checks.store!.detail), /Redis store is unreachable/);
  const client = await SmtpTestClient.connect(s.port('mx'));
  await client.hello();
  assert.equal((await client.sendMail('a@example.net', ['b@example.test'])).code, 250, 'mail is taken meanwhile');
  await client.quit();
});
