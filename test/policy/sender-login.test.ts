// Sender binding (listener senderLogin, Postfix reject_authenticated_sender_login_mismatch) with a real
// server and client: the built-in decision, the mailfrom script that sees it and may override it, the null
// sender option, unauthenticated sessions, and the configuration check of the table name.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { parseConfig } from '../../engine/config/load-config.ts';

let pki: TestPki;
let ca: string;
let server: TestServer;
const PASSWORD = 'alice-Secret-1';

const plain = (user: string, password: string): string => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

function config(senderLogin: string): string {
  return `
localDomains: [example.com]
users: ./users
tables: { sender_logins: ./sender_logins }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    auth: { mechanisms: [PLAIN] }
    senderLogin: ${senderLogin}
`;
}

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  server = await startTestServer({
    config: config('{ enforce: true, table: sender_logins }'),
    files: {
      users: `alice@example.com:${await hashPassword(PASSWORD)}\n`,
      sender_logins: 'alice@example.com  info@example.com,@alice.example\n',
    },
    scripts: {
      'mailfrom.ts': `
        export default (ctx) => {
          log('builtin ' + ctx.address.address + ' ' + ctx.builtin.accepted + ' ' + ctx.builtin.reason);
          if (ctx.address.address === 'boss@example.com') return accept();          // overrides a refusal
          if (ctx.address.address === 'info@example.com') return reject('not today'); // overrides an acceptance
        };`,
    },
  });
});
after(() => server.stop());

async function client(login: boolean): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: { ca } });
  if (login) assert.equal((await c.command(plain('alice@example.com', PASSWORD))).code, 235);
  return c;
}

async function mailFrom(c: SmtpTestClient, sender: string): Promise<string> {
  const r = await c.command(`MAIL FROM:<${sender}>`);
  await c.command('RSET');
  return r.text;
}

test('a logged-in user: its own address, table entries and @domain pass; others and <> get 553 5.7.1; the script sees the decision and its verdict wins', async () => {
  const c = await client(true);
  assert.equal(await mailFrom(c, 'Alice@Example.com'), '250 2.1.0 Accepted');
  assert.equal(await mailFrom(c, 'x@alice.example'), '250 2.1.0 Accepted');
  assert.equal(await mailFrom(c, 'ceo@bank.example'), '553 5.7.1 <ceo@bank.example>: Sender address rejected: not owned by user alice@example.com');
  assert.equal(await mailFrom(c, 'x@sub.alice.example'), '553 5.7.1 <x@sub.alice.example>: Sender address rejected: not owned by user alice@example.com');
  assert.equal(await mailFrom(c, ''), '553 5.7.1 <>: Sender address rejected: null sender not allowed for user alice@example.com');
  assert.equal(await mailFrom(c, 'boss@example.com'), '250 2.1.0 Accepted', 'script accept() overrides the refusal');
  assert.equal(await mailFrom(c, 'info@example.com'), '550 5.7.1 not today', 'script reject() overrides the acceptance');
  await c.quit();
  const seen = server.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('builtin '));
  assert.deepEqual(seen, [
    'builtin Alice@Example.com true own-address',
    'builtin x@alice.example true listed',
    'builtin ceo@bank.example false sender-login-mismatch',
    'builtin x@sub.alice.example false sender-login-mismatch',
    'builtin  false null-sender',
    'builtin boss@example.com false sender-login-mismatch',
    'builtin info@example.com true listed',
  ]);
});

test('an unauthenticated session is not bound (inbound mail): any sender, builtin reason not-authenticated', async () => {
  const c = await client(false);
  assert.equal(await mailFrom(c, 'ceo@bank.example'), '250 2.1.0 Accepted');
  await c.quit();
  assert.equal(server.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('builtin ')).at(-1), 'builtin ceo@bank.example true not-authenticated');
});

test('allowNullSender: true lets a logged-in session use <>; enforce off binds nothing', async () => {
  const files = { users: `alice@example.com:${await hashPassword(PASSWORD)}\n`, sender_logins: '' };
  for (const [senderLogin, nullReply, otherReply] of [
    ['{ enforce: true, allowNullSender: true }', '250 2.1.0 Accepted', '553 5.7.1 <ceo@bank.example>: Sender address rejected: not owned by user alice@example.com'],
    ['{}', '250 2.1.0 Accepted', '250 2.1.0 Accepted'],
  ] as const) {
    const s = await startTestServer({ config: config(senderLogin), files });
    try {
      const c = await SmtpTestClient.connect(s.port('sub'));
      await c.hello({ starttls: { ca } });
      assert.equal((await c.command(plain('alice@example.com', PASSWORD))).code, 235);
      assert.equal(await mailFrom(c, ''), nullReply, senderLogin);
      assert.equal(await mailFrom(c, 'ceo@bank.example'), otherReply, senderLogin);
      await c.quit();
    } finally {
      await s.stop();
    }
  }
});

test('senderLogin.table must name a table under tables', () => {
  assert.throws(() => parseConfig(`
listeners:
  - name: sub
    listen: 127.0.0.1:0
    senderLogin: { enforce: true, table: nope }
`, 'postern.yaml', '/tmp'), /postern\.yaml:5:\d+: listeners\[0\]\.senderLogin\.table: no table named "nope" under tables/);
});

test("the repository's default scripts/mailfrom.ts leaves the decision to senderLogin when it is enforced, and binds to the own address when not", async () => {
  const script = await readFile(new URL('../../scripts/mailfrom.ts', import.meta.url), 'utf8');
  const files = { users: `alice@example.com:${await hashPassword(PASSWORD)}\n`, sender_logins: 'alice@example.com  info@example.com\n' };
  for (const [senderLogin, listedReply] of [
    ['{ enforce: true, table: sender_logins }', '250 2.1.0 Accepted'],
    ['{}', '553 5.7.1 <info@example.com>: sender address not owned by alice@example.com'],
  ] as const) {
    const s = await startTestServer({ config: config(senderLogin), files, scripts: { 'mailfrom.ts': script } });
    try {
      const c = await SmtpTestClient.connect(s.port('sub'));
      await c.hello({ starttls: { ca } });
      assert.equal((await c.command(plain('alice@example.com', PASSWORD))).code, 235);
      assert.equal(await mailFrom(c, 'info@example.com'), listedReply, senderLogin);
      assert.equal(await mailFrom(c, 'alice@example.com'), '250 2.1.0 Accepted', senderLogin);
      assert.match(await mailFrom(c, 'ceo@bank.example'), /^553 5\.7\.1 <ceo@bank\.example>: [Ss]ender address /, senderLogin);
      await c.quit();
    } finally {
      await s.stop();
    }
  }
});

// An auth script that logs in a name of its own directory (accept() with the name as sent) may log in `\u212Aate`,
// another user than kate there. The binding lowercased it to kate@example.com and let it send as kate; likewise a
// header From `\u212Aate@…` passed for kate's. Lowercasing that makes ASCII out of what was not now keeps the case.
// The repository's default scripts/mailfrom.ts (a listener without senderLogin.enforce) compared with toLowerCase() too.
test('a login whose name lowercases into ASCII it did not have (U+212A KELVIN SIGN) does not own the ASCII address (senderLogin, and the default mailfrom.ts)', async () => {
  const defaultScript = await readFile(new URL('../../scripts/mailfrom.ts', import.meta.url), 'utf8');
  for (const [senderLogin, scripts, refusal] of [
    ['{ enforce: true }', {}, '553 5.7.1 <kate@example.com>: Sender address rejected: not owned by user ?ate@example.com'],
    ['{}', { 'mailfrom.ts': defaultScript }, '553 5.7.1 <kate@example.com>: sender address not owned by ?ate@example.com'],
  ] as const) {
  const s = await startTestServer({
    config: config(senderLogin),
    files: { users: `kate@example.com:${await hashPassword(PASSWORD)}\n`, sender_logins: '' },
    scripts: { ...scripts, 'auth.ts': `export default (ctx) => ctx.auth.username.startsWith('\\u212A') && ctx.auth.password === 'directory-pw' ? accept({ username: ctx.auth.username }) : undefined;` },
  });
  try {
    const c = await SmtpTestClient.connect(s.port('sub'));
    await c.hello({ starttls: { ca } });
    assert.equal((await c.command(plain('\u212Aate@example.com', 'directory-pw'))).code, 235);
    assert.equal(await mailFrom(c, 'kate@example.com'), refusal, senderLogin);
    await c.quit();
    const kate = await SmtpTestClient.connect(s.port('sub'));
    await kate.hello({ starttls: { ca } });
    assert.equal((await kate.command(plain('kate@example.com', PASSWORD))).code, 235);
    assert.equal(await mailFrom(kate, 'kate@example.com'), '250 2.1.0 Accepted', 'kate herself (the test can fail)');
    await kate.quit();
  } finally {
    await s.stop();
  }
  }
});
