// Password guessing spread over many client addresses (a botnet: each address below authFailuresPerIp, all at one
// account) is slowed at the account: limits.authFailuresPerAccount. It must not hand a stranger a way to lock the
// real user out: a certificate login (EXTERNAL), and password logins from an address that logged in as the account
// before, pass the lock. Real sockets from distinct loopback addresses (127.0.0.x), a real server (and, for the count
// over servers, two servers sharing one Redis).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, type TlsClientOptions } from '../helpers/smtp-client.ts';
import { clientTlsOptions, makeTestPki } from '../helpers/pki.ts';
import { needsRedis, startRedis } from '../helpers/redis-server.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { INVALID, b64, plain, submissionConfig } from './helpers/submission.ts';

const DEFERRED = '454 4.7.0 Temporary authentication failure, try again later';
const PASSWORD = 'alice-Secret-1';
const LIMITS = '{ authFailuresPerIp: 3, authFailuresPerAccount: 5, authFailuresBeforeDelay: 100 }';

async function login(server: TestServer, ca: string, from: string, line: string, cert?: TlsClientOptions): Promise<string> {
  const c = await SmtpTestClient.connect(server.port('sub'), { localAddress: from });
  try {
    await c.hello({ starttls: { ca, ...cert } });
    return (await c.command(line)).text;
  } finally {
    c.destroy();
  }
}

test('guesses at one account from many addresses, each below authFailuresPerIp: the account defers password logins from new addresses, not its known address nor its certificate', async () => {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const users = `alice@example.com:${await hashPassword(PASSWORD)}\nbob@example.com:${await hashPassword('bob-Secret-2')}\n`;
  const s = await startTestServer({
    config: submissionConfig(pki, LIMITS, { auth: '{ mechanisms: [PLAIN, LOGIN, EXTERNAL] }' }),
    files: { users },
  });
  try {
    // Alice's own address: she logged in from it before the attack.
    assert.equal(await login(s, ca, '127.0.0.2', plain('alice@example.com', PASSWORD)), '235 2.7.0 Authentication successful');
    // The botnet: five addresses, one wrong guess each (the per-address limit never comes near).
    for (let i = 0; i < 5; i++) assert.equal(await login(s, ca, `127.0.1.${i + 1}`, plain('Alice@Example.com', `guess-${i}`)), INVALID);
    // The next guess from a new address is not decided, whatever the password: the same 454 for the right one.
    assert.equal(await login(s, ca, '127.0.1.50', plain('alice@example.com', 'guess-5')), DEFERRED);
    assert.equal(await login(s, ca, '127.0.1.51', plain('alice@example.com', PASSWORD)), DEFERRED);
    // LOGIN is a password mechanism too.
    const c = await SmtpTestClient.connect(s.port('sub'), { localAddress: '127.0.1.52' });
    await c.hello({ starttls: { ca } });
    assert.equal((await c.command('AUTH LOGIN')).code, 334);
    assert.equal((await c.command(b64('alice@example.com'))).code, 334);
    assert.equal((await c.command(b64(PASSWORD))).text, DEFERRED);
    c.destroy();
    // Not a lockout: alice's known address still logs in with her password, and her certificate from anywhere.
    assert.equal(await login(s, ca, '127.0.0.2', plain('alice@example.com', PASSWORD)), '235 2.7.0 Authentication successful');
    assert.equal(await login(s, ca, '127.0.1.53', 'AUTH EXTERNAL =', await clientTlsOptions(pki, 'alice')), '235 2.7.0 Authentication successful');
    // Another account is not affected.
    assert.equal(await login(s, ca, '127.0.1.50', plain('bob@example.com', 'bob-Secret-2')), '235 2.7.0 Authentication successful');
    // The deferrals are no failures of the addresses (none of them reached authFailuresPerIp).
    assert.equal(await s.runtime.authFailures.count('127.0.1.50'), 0);
    // Said once, at warn, for the administrator: no single address to ban.
    assert.equal(s.logs.filter((l) => String(l.msg).startsWith('account reached limits.authFailuresPerAccount') && l.account === 'alice@example.com').length, 1);
  } finally {
    await s.stop();
  }
});

test('an account that does not exist is deferred the same way (the 454 tells no one which accounts exist)', async () => {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const s = await startTestServer({ config: submissionConfig(pki, LIMITS), files: { users: `alice@example.com:${await hashPassword(PASSWORD)}\n` } });
  try {
    for (let i = 0; i < 5; i++) assert.equal(await login(s, ca, `127.0.2.${i + 1}`, plain('nobody@example.com', `guess-${i}`)), INVALID);
    assert.equal(await login(s, ca, '127.0.2.50', plain('nobody@example.com', 'guess-5')), DEFERRED);
  } finally {
    await s.stop();
  }
});

test('two servers sharing one Redis: guesses at one account split over them are counted together', needsRedis(), async () => {
  const redis = await startRedis();
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const users = `alice@example.com:${await hashPassword(PASSWORD)}\n`;
  const config = `store: { redis: { url: "${redis.url}", timeoutMs: 2000 } }\nsandbox: { timeoutMs: 5000 }\n${submissionConfig(pki, LIMITS)}`;
  const a = await startTestServer({ config, files: { users } });
  const b = await startTestServer({ config, files: { users } });
  try {
    for (let i = 0; i < 5; i++) assert.equal(await login(i % 2 ? a : b, ca, `127.0.3.${i + 1}`, plain('alice@example.com', `guess-${i}`)), INVALID);
    assert.equal(await login(a, ca, '127.0.3.50', plain('alice@example.com', PASSWORD)), DEFERRED);
    assert.equal(await login(b, ca, '127.0.3.51', plain('alice@example.com', PASSWORD)), DEFERRED);
  } finally {
    await a.stop();
    await b.stop();
    await redis.stop();
  }
});
