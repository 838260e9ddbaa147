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
import { INVALID, TOO_MANY, plain } from '../auth/helpers/submission.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { greetedFrom, guessAtOnce, guessesConfig } from '../helpers/parallel-guesses.ts';
import { needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';

const skip = needsRedis().skip;
const LIMIT = 1;

let redis: TestRedis;
const nodes: ClusterProcess[] = [];

before(async () => {
  if (skip) return;
  redis = await startRedis();
  const files = { users: `alice:${await hashPassword('right')}\n` };
  const store = `store:\n  redis: { url: "${redis.url}", keyPrefix: "parallel-guesses:", timeoutMs: 1000 }`;
  for (let i = 0; i < 2; i++) nodes.push(await startCluster({ config: guessesConfig({ workers: 1, limit: LIMIT, store }), files }));
});

after(async () => {
  await Promise.all(nodes.map((n) => n.stop()));
  await redis?.stop();
});

/** Four connections to each node. */
const ports = (): number[] => nodes.flatMap((n) => Array.from({ length: 4 }, () => n.port('sub')));

test('wrong passwords sent at once to two servers: no more than authFailuresPerIp are checked over both', { skip, timeout: 180_000 }, async () => {
  const replies = await guessAtOnce(ports(), '127.0.0.1', (i) => `guess-${i}`);
  assert.deepEqual([replies.filter((r) => r === INVALID).length, replies.filter((r) => r === TOO_MANY).length], [LIMIT, 8 - LIMIT], replies.join('\n'));
  // The right password is refused too now, on either server: the address used up its guesses.
  for (const n of nodes) {
    const c = await SmtpTestClient.connect(n.port('sub'));
    try {
      assert.equal((await c.read(30_000)).text, TOO_MANY);
    } finally {
      c.destroy();
    }
  }
});

test('a right password does not use up a guess: logins in parallel on both servers, then the limit still allows its one', { skip, timeout: 180_000 }, async () => {
  // Another client address than the first test's, whose guesses are used up.
  const replies = await guessAtOnce(ports(), '127.0.0.2', () => 'right');
  assert.deepEqual(replies.map((r) => r.slice(0, 3)), replies.map(() => '235'), replies.join('\n'));
  const c = await greetedFrom(nodes[1]!.port('sub'), '127.0.0.2');
  try {
    assert.equal((await c.command(plain('alice', 'wrong'), 30_000)).text, INVALID, 'the one guess the limit allows');
  } finally {
    c.destroy();
  }
});
