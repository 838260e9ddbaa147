// An address that logged in as an account within the last 30 days passes the account's limits.authFailuresPerAccount
// lock: counted from its latest login, not its first. A user who logs in from home every day must not lose the
// exemption 30 days after the first of those logins. A real server and real sockets; the clock moved on by the test
// (the store's clock and Date.now together), since the exemption is a month long.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { MemoryCounterStore } from '../../engine/store/index.ts';
import { INVALID, plain, submissionConfig } from './helpers/submission.ts';

const DEFERRED = '454 4.7.0 Temporary authentication failure, try again later';
const OK = '235 2.7.0 Authentication successful';
const PASSWORD = 'alice-Secret-1';
const DAY_MS = 24 * 3600 * 1000;

async function login(server: TestServer, ca: string, from: string, line: string): Promise<string> {
  const c = await SmtpTestClient.connect(server.port('sub'), { localAddress: from });
  try {
    await c.hello({ starttls: { ca } });
    return (await c.command(line)).text;
  } finally {
    c.destroy();
  }
}

test('alice logged in from home on day 0 and on day 29: on day 31 her home address still passes her account\'s lock', async (t) => {
  let offset = 0;
  const realNow = Date.now.bind(Date);
  Date.now = () => realNow() + offset;
  t.after(() => { Date.now = realNow; });
  const store = new MemoryCounterStore(() => performance.now() + offset);
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const s = await startTestServer({
    config: submissionConfig(pki, '{ authFailuresPerIp: 3, authFailuresPerAccount: 5, authFailuresBeforeDelay: 100 }'),
    files: { users: `alice@example.com:${await hashPassword(PASSWORD)}\n` },
    memoryStore: store,
  });
  try {
    assert.equal(await login(s, ca, '127.0.0.2', plain('alice@example.com', PASSWORD)), OK, 'day 0');
    assert.equal(await login(s, ca, '127.0.0.3', plain('alice@example.com', PASSWORD)), OK, 'day 0, from a friend\'s');
    offset = 29 * DAY_MS;
    assert.equal(await login(s, ca, '127.0.0.2', plain('alice@example.com', PASSWORD)), OK, 'day 29');
    offset = 31 * DAY_MS;
    for (let i = 1; i <= 5; i++) assert.equal(await login(s, ca, `127.0.9.${i}`, plain('alice@example.com', `guess-${i}`)), INVALID);
    assert.equal(await login(s, ca, '127.0.9.50', plain('alice@example.com', PASSWORD)), DEFERRED, 'locked for new addresses');
    assert.equal(await login(s, ca, '127.0.0.2', plain('alice@example.com', PASSWORD)), OK, 'home: she logged in two days ago');
    // Not for ever: an address whose only login was 46 days ago is a new address again.
    offset = 46 * DAY_MS;
    for (let i = 11; i <= 15; i++) assert.equal(await login(s, ca, `127.0.9.${i}`, plain('alice@example.com', `guess-${i}`)), INVALID);
    assert.equal(await login(s, ca, '127.0.0.3', plain('alice@example.com', PASSWORD)), DEFERRED, 'the friend\'s, 46 days on');
    assert.equal(await login(s, ca, '127.0.0.2', plain('alice@example.com', PASSWORD)), OK, 'home, 17 days after her latest login');
  } finally {
    await s.stop();
  }
});
