// limits.authFailuresPerAccount against a botnet: the limit must hold for guesses sent all at once (fired in parallel,
// not one after another), on one server and on two sharing Redis. Real sockets from distinct loopback addresses, real servers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { needsRedis, startRedis } from '../helpers/redis-server.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { INVALID, plain, submissionConfig } from './helpers/submission.ts';

const DEFERRED = '454 4.7.0 Temporary authentication failure, try again later';
const PASSWORD = 'alice-Secret-1';

async function tlsClient(server: TestServer, ca: string, from: string): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port('sub'), { localAddress: from });
  await c.hello({ starttls: { ca } });
  return c;
}

test('guesses at one account sent at the same moment from many addresses: no more than authFailuresPerAccount are decided', async () => {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const s = await startTestServer({
    config: submissionConfig(pki, '{ authFailuresPerIp: 3, authFailuresPerAccount: 5, authFailuresBeforeDelay: 100 }'),
    files: { users: `alice@example.com:${await hashPassword(PASSWORD)}\n` },
  });
  const clients: SmtpTestClient[] = [];
  try {
    // Twenty addresses, one guess each (far below authFailuresPerIp), every connection ready before any guess.
    for (let i = 1; i <= 20; i++) clients.push(await tlsClient(s, ca, `127.0.5.${i}`));
    const replies = await Promise.all(clients.map((c, i) => c.command(plain('alice@example.com', `guess-${i}`)).then((r) => r.text)));
    const decided = replies.filter((r) => r === INVALID).length;
    assert.equal(decided, 5, `decided ${decided} guesses, not authFailuresPerAccount (5): ${replies.join(' | ')}`);
    assert.equal(replies.filter((r) => r === DEFERRED).length, 15);
  } finally {
    for (const c of clients) c.destroy();
    await s.stop();
  }
});

test('two servers sharing one Redis: 20 guesses at once, split over them, at a limit of 5: 5 decided', needsRedis(), async () => {
  const redis = await startRedis();
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const users = `alice@example.com:${await hashPassword(PASSWORD)}\n`;
  const config = `store: { redis: { url: "${redis.url}", timeoutMs: 2000 } }\nsandbox: { timeoutMs: 5000 }\n${submissionConfig(pki, '{ authFailuresPerIp: 3, authFailuresPerAccount: 5, authFailuresBeforeDelay: 100 }')}`;
  const a = await startTestServer({ config, files: { users } });
  const b = await startTestServer({ config, files: { users } });
  const clients: SmtpTestClient[] = [];
  try {
    for (let i = 1; i <= 20; i++) clients.push(await tlsClient(i % 2 ? a : b, ca, `127.0.10.${i}`));
    const replies = await Promise.all(clients.map((c, i) => c.command(plain('alice@example.com', `guess-${i}`)).then((r) => r.text)));
    assert.equal(replies.filter((r) => r === INVALID).length, 5, replies.join(' | '));
    assert.equal(replies.filter((r) => r === DEFERRED).length, 15);
  } finally {
    for (const c of clients) c.destroy();
    await a.stop();
    await b.stop();
    await redis.stop();
  }
});
