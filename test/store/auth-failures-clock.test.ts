/**
 * Two `postern serve` sharing one Redis, one of them with its wall clock an hour behind (libfaketime: a
 * drifted VM, a host without NTP). limits.authFailuresPerIp must hold over both: each failure is timed on
 * Redis's clock. Timed on each server's own, the slow server's failures were an hour old to the other
 * (not counted there, and deleted by its next failure), so an attacker had the limit's guesses on each.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { fakeClock, needsFaketime } from '../helpers/faketime.ts';

const skip = needsRedis().skip || needsFaketime;

const config = (redisUrl: string): string => `
workers: 1
users: ./users
store:
  redis: { url: "${redisUrl}", keyPrefix: "clock-test:", timeoutMs: 1000 }
sandbox: { timeoutMs: 3000 }
listeners:
  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 3, authFailuresBeforeDelay: 10, authFailureWindowMs: 600000 }
`;

let redis: TestRedis;
let slow: ClusterProcess;
let right: ClusterProcess;

before(async () => {
  if (skip) return;
  redis = await startRedis();
  const files = { users: `alice:${await hashPassword('right')}\n` };
  slow = await startCluster({
    config: config(redis.url), files,
    env: fakeClock('-3600'),
  });
  right = await startCluster({ config: config(redis.url), files });
});

after(async () => {
  await slow?.stop();
  await right?.stop();
  await redis?.stop();
});

/** One wrong password on a new connection: the greeting, then the AUTH reply (or the refusal instead). */
async function guess(c: ClusterProcess): Promise<string> {
  const client = await SmtpTestClient.connect(c.port('sub'));
  try {
    const greeting = await client.read(30_000);
    if (greeting.code !== 220) return greeting.text;
    assert.equal((await client.command('EHLO client.test', 30_000)).code, 250);
    return (await client.command(`AUTH PLAIN ${Buffer.from('\0alice\0wrong').toString('base64')}`, 30_000)).text;
  } finally {
    client.destroy();
  }
}

test('AUTH failures spread over two servers whose clocks differ by an hour count together', { skip, timeout: 180_000 }, async () => {
  await slow.waitFor('the slow server\'s worker', () => slow.logs.some((l) => l.msg === 'worker ready'));
  const started = slow.logs.find((l) => l.msg === 'supervisor started')!;
  assert.ok(Date.parse(String(started.time)) < Date.now() - 30 * 60_000, `the slow server's clock is behind (${String(started.time)})`);
  assert.match(await guess(slow), /^535 /);
  assert.match(await guess(slow), /^535 /);
  assert.match(await guess(right), /^535 /, 'the third failure, on the other server');
  // Three failures within the window, wherever they were made: both servers refuse the address now.
  assert.match(await guess(right), /^421 4\.7\.0 Too many authentication failures/);
  assert.match(await guess(slow), /^421 4\.7\.0 Too many authentication failures/);
});
