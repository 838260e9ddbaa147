/**
 * Two `postern serve` sharing one Redis, guessed at in parallel: wrong passwords written at once over
 * connections to both. limits.authFailuresPerIp must bound the guesses checked over both servers, not per
 * process. Each process checked the count, verified the password (argon2: tens of milliseconds), then
 * recorded the failure: guesses being decided in other processes were not counted yet, so every process
 * passed the check at once (one guess too many per process each time the count neared the limit: with 16
 * workers on each of two nodes, 51 guesses where 20 were allowed). A guess now takes its place in the count
 * before it is decided (one Redis script), and gives it back when the password was right.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';

const skip = needsRedis().skip;
const LIMIT = 1;
const PER_NODE = 4;

const config = (redisUrl: string): string => `
workers: 1
users: ./users
sandbox: { timeoutMs: 3000 }
store:
  redis: { url: "${redisUrl}", keyPrefix: "parallel-guesses:", timeoutMs: 1000 }
listeners:
  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresPerIp: ${LIMIT}, authFailuresBeforeDelay: 10, authFailureWindowMs: 600000, maxConnectionsPerIp: 20 }
`;

let redis: TestRedis;
let nodes: ClusterProcess[] = [];

before(async () => {
  if (skip) return;
  redis = await startRedis();
  const files = { users: `alice:${await hashPassword('right')}\n` };
  for (let i = 0; i < 2; i++) nodes.push(await startCluster({ config: config(redis.url), files }));
});

after(async () => {
  await Promise.all(nodes.map((n) => n.stop()));
  await redis?.stop();
});

const plain = (user: string, password: string): string => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

/** A connection to `node`, greeted and past EHLO. */
async function ready(node: ClusterProcess, localAddress = '127.0.0.1'): Promise<SmtpTestClient> {
  const client = await SmtpTestClient.connect(node.port('sub'), { localAddress });
  assert.equal((await client.read(30_000)).code, 220);
  assert.equal((await client.command('EHLO guesser.test', 30_000)).code, 250);
  return client;
}

test('wrong passwords sent at once to two servers: no more than authFailuresPerIp are checked over both', { skip, timeout: 180_000 }, async () => {
  const open = (await Promise.all(nodes.map((n) => Promise.all(Array.from({ length: PER_NODE }, () => ready(n)))))).flat();
  try {
    // Written before any reply is read: the guesses are decided in parallel on both servers.
    for (const [i, c] of open.entries()) c.write(`${plain('alice', `guess-${i}`)}\r\n`);
    const replies = await Promise.all(open.map((c) => c.read(60_000)));
    const checked = replies.filter((r) => r.code === 535).length;
    const refused = replies.filter((r) => /^421 4\.7\.0 Too many authentication failures/.test(r.text)).length;
    assert.equal(checked + refused, open.length, replies.map((r) => r.text).join('\n'));
    assert.equal(checked, LIMIT, `guesses checked over both servers:\n${replies.map((r) => r.text).join('\n')}`);
  } finally {
    for (const c of open) c.destroy();
  }
  // The right password is refused too now, on either server: the address used up its guesses.
  for (const n of nodes) {
    const c = await SmtpTestClient.connect(n.port('sub'));
    try {
      assert.match((await c.read(30_000)).text, /^421 4\.7\.0 Too many authentication failures/);
    } finally {
      c.destroy();
    }
  }
});

test('a right password does not use up a guess: logins in parallel on both servers, then the limit still allows its one', { skip, timeout: 180_000 }, async () => {
  // Another client address than the first test's, whose guesses are used up.
  const client = '127.0.0.2';
  const open = (await Promise.all(nodes.map((n) => Promise.all(Array.from({ length: PER_NODE }, () => ready(n, client)))))).flat();
  try {
    for (const c of open) c.write(`${plain('alice', 'right')}\r\n`);
    const replies = await Promise.all(open.map((c) => c.read(60_000)));
    assert.deepEqual(replies.map((r) => r.code), open.map(() => 235), replies.map((r) => r.text).join('\n'));
  } finally {
    for (const c of open) c.destroy();
  }
  const c = await ready(nodes[1]!, client);
  try {
    assert.equal((await c.command(plain('alice', 'wrong'), 30_000)).code, 535, 'the one guess the limit allows');
  } finally {
    c.destroy();
  }
});
