/**
 * The AUTH failure counts were kept, and judged, for the longest authFailureWindowMs of every listener, an MX without
 * AUTH included (now kept for it, judged in each listener's own): its default (10 minutes) made a submission
 * listener's 3 s window 10 minutes, an address that mistyped its password twice locked out that long. (Seen as the
 * clock-jumps test's AUTH case failing on that file's shared server, whose `in` listener is such an MX: the clock step
 * had nothing to do with it.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { until } from '../helpers/wait.ts';
import { refusedWithinWindow } from '../helpers/auth-window.ts';
import { startCluster, ONE_WORKER } from '../helpers/cluster.ts';
import { startTestServer } from '../helpers/postern.ts';
import { needsRedis, startRedis } from '../helpers/redis-server.ts';

// The MX `in` (ONE_WORKER's) leaves authFailureWindowMs at its default; the submission listener's window is 3 s.
const WINDOW_MS = 3000;
const SUB = `  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 2, authFailuresBeforeDelay: 10, authFailureWindowMs: ${WINDOW_MS} }
`;

/** Two wrong passwords from 127.0.0.1 on `port`: refused, then let in again once the listener's window passed. */
async function refusedThenLetIn(port: () => number): Promise<void> {
  const greeting = async (): Promise<string> => {
    const client = await SmtpTestClient.connect(port());
    try {
      return (await client.read(30_000)).text;
    } finally {
      client.destroy();
    }
  };
  /** One connection, greeted, with one wrong password: 535. */
  const wrongGuess = async (): Promise<void> => {
    const client = await SmtpTestClient.connect(port());
    try {
      assert.equal((await client.read(30_000)).code, 220);
      await client.command('EHLO client.test', 30_000);
      assert.equal((await client.command(`AUTH PLAIN ${Buffer.from('\0alice\0wrong').toString('base64')}`, 30_000)).code, 535);
    } finally {
      client.destroy();
    }
  };
  await refusedWithinWindow(WINDOW_MS, 2, wrongGuess, greeting);
  // The bound is the test's patience, twenty times the window, and far below the MX's 10 minutes.
  await until('a new connection greeted again', async () => (await greeting()).startsWith('220'), { timeoutMs: 60_000 });
  // And its next guess is decided (the claim before a guess counts in the listener's window too), not refused.
  await wrongGuess();
}

test('postern serve: an MX listener beside submission does not lengthen submission\'s AUTH failure window', { timeout: 120_000 }, async () => {
  const c = await startCluster({ config: `${ONE_WORKER}${SUB}users: ./users\n`, files: { users: `alice:${await hashPassword('right')}\n` } });
  try {
    await refusedThenLetIn(() => c.port('sub'));
  } finally {
    await c.stop();
  }
});

test('postern serve with Redis: an MX listener beside submission does not lengthen submission\'s AUTH failure window', { skip: needsRedis().skip, timeout: 120_000 }, async () => {
  const redis = await startRedis();
  const store = `store:\n  redis: { url: "${redis.url}", keyPrefix: "auth-window:" }\n`;
  const c = await startCluster({ config: `${ONE_WORKER}${SUB}users: ./users\n${store}`, files: { users: `alice:${await hashPassword('right')}\n` } });
  try {
    await refusedThenLetIn(() => c.port('sub'));
  } finally {
    await c.stop();
    await redis.stop();
  }
});

test('one process: an MX listener beside submission does not lengthen submission\'s AUTH failure window; a listener with a longer one still refuses', { timeout: 120_000 }, async () => {
  const s = await startTestServer({
    config: `
localDomains: [example.test]
users: ./users
listeners:
  - { name: in, listen: "127.0.0.1:0", reverseDns: false, limits: { greetingDelayMs: 0 } }
  - { name: sub2, listen: "127.0.0.1:0", reverseDns: false, auth: { mechanisms: [PLAIN] }, limits: { greetingDelayMs: 0, authFailuresPerIp: 2 } }
${SUB.replace('{PORT:sub}', '0').replace('listen: 127.0.0.1:0', 'listen: "127.0.0.1:0"')}`,
    files: { users: `alice:${await hashPassword('right')}\n` },
  });
  try {
    await refusedThenLetIn(() => s.port('sub'));
    // A listener with AUTH and the default window still refuses: the failures were kept, only judged per listener.
    const other = await SmtpTestClient.connect(s.port('sub2'));
    try {
      assert.match((await other.read(30_000)).text, /^421 4\.7\.0 Too many authentication failures/);
    } finally {
      other.destroy();
    }
  } finally {
    await s.stop();
  }
});
