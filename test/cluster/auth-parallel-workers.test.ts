/**
 * One `postern serve` with two workers and no Redis, guessed at in parallel: wrong passwords written at once
 * over connections the supervisor hands round robin. Each worker decides one guess of an address at a time,
 * and the failures reach the other workers relayed by the supervisor: both workers checked the count before
 * either failure was recorded, so with authFailuresPerIp 1 two guesses were checked. The places of guesses
 * being decided are now counted in the supervisor's store before they are decided.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { INVALID, TOO_MANY, plain } from '../auth/helpers/submission.ts';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { greetedFrom, guessAtOnce, guessesConfig } from '../helpers/parallel-guesses.ts';

const LIMIT = 1;
let server: ClusterProcess;

before(async () => {
  server = await startCluster({ config: guessesConfig({ workers: 2, limit: LIMIT }), files: { users: `alice:${await hashPassword('right')}\n` } });
});

after(async () => {
  await server?.stop();
});

const ports = (): number[] => Array.from({ length: 8 }, () => server.port('sub'));

test('wrong passwords sent at once to two workers: no more than authFailuresPerIp are checked', { timeout: 180_000 }, async () => {
  const replies = await guessAtOnce(ports(), '127.0.0.1', (i) => `guess-${i}`);
  assert.deepEqual([replies.filter((r) => r === INVALID).length, replies.filter((r) => r === TOO_MANY).length], [LIMIT, 8 - LIMIT], replies.join('\n'));
});

test('right passwords sent at once to two workers all log in, and leave the address its guess', { timeout: 180_000 }, async () => {
  const replies = await guessAtOnce(ports(), '127.0.0.3', () => 'right');
  assert.deepEqual(replies.map((r) => r.slice(0, 3)), replies.map(() => '235'), replies.join('\n'));
  const c = await greetedFrom(server.port('sub'), '127.0.0.3');
  try {
    assert.equal((await c.command(plain('alice', 'wrong'), 30_000)).text, INVALID, 'the one guess the limit allows');
  } finally {
    c.destroy();
  }
});
