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
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';

const LIMIT = 1;
const CONNECTIONS = 8;

const config = `
workers: 2
workerChoice: roundRobin
users: ./users
listeners:
  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresPerIp: ${LIMIT}, authFailuresBeforeDelay: 10, authFailureWindowMs: 600000, maxConnectionsPerIp: 20 }
`;

let server: ClusterProcess;

before(async () => {
  server = await startCluster({ config, files: { users: `alice:${await hashPassword('right')}\n` } });
});

after(async () => {
  await server?.stop();
});

const plain = (user: string, password: string): string => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

async function ready(localAddress: string): Promise<SmtpTestClient> {
  const client = await SmtpTestClient.connect(server.port('sub'), { localAddress });
  assert.equal((await client.read(30_000)).code, 220);
  assert.equal((await client.command('EHLO guesser.test', 30_000)).code, 250);
  return client;
}

async function allAtOnce(localAddress: string, password: (i: number) => string): Promise<string[]> {
  const open: SmtpTestClient[] = [];
  for (let i = 0; i < CONNECTIONS; i++) open.push(await ready(localAddress));
  try {
    // Written before any reply is read: the guesses are decided in parallel in both workers.
    for (const [i, c] of open.entries()) c.write(`${plain('alice', password(i))}\r\n`);
    return (await Promise.all(open.map((c) => c.read(60_000)))).map((r) => r.text);
  } finally {
    for (const c of open) c.destroy();
  }
}

test('wrong passwords sent at once to two workers: no more than authFailuresPerIp are checked', { timeout: 180_000 }, async () => {
  const replies = await allAtOnce('127.0.0.1', (i) => `guess-${i}`);
  const checked = replies.filter((r) => r.startsWith('535 ')).length;
  assert.equal(checked + replies.filter((r) => r.startsWith('421 4.7.0 Too many authentication failures')).length, CONNECTIONS, replies.join('\n'));
  assert.equal(checked, LIMIT, replies.join('\n'));
});

test('right passwords sent at once to two workers all log in, and leave the address its guess', { timeout: 180_000 }, async () => {
  const replies = await allAtOnce('127.0.0.3', () => 'right');
  assert.deepEqual(replies.map((r) => r.slice(0, 3)), replies.map(() => '235'), replies.join('\n'));
  const c = await ready('127.0.0.3');
  try {
    assert.equal((await c.command(plain('alice', 'wrong'), 30_000)).code, 535, 'the one guess the limit allows');
  } finally {
    c.destroy();
  }
});
