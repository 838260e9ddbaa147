// Failed logins counted: the failure limit, across listeners, per account (hostile clients too) and a script's
// failure. One file for what were several (one test process and one load of the engine instead of one each), each its
// own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, type TlsClientOptions } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki, clientTlsOptions } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { INVALID, TOO_MANY, b64, plain, submissionConfig, startSubmission, type Submission } from './helpers/submission.ts';
import { needsRedis, startRedis } from '../helpers/redis-server.ts';

describe('failure-limit', () => {
  // The per-IP auth-failure limit counted across connections that are already open (a guesser opens its
  // connections first, then spreads its attempts over them), and failure replies that do not tell a guesser
  // whether the password was right.
  const PASSWORD = 'alice-Secret-1';

  let pki: TestPki;
  let ca: string;
  let alice: { cert: string; key: string };
  let users: string;


  const config = (limits: string): string => submissionConfig(pki, limits);

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    alice = { cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') };
    users = `alice@example.com:${await hashPassword(PASSWORD)}\nbob@example.com:${await hashPassword('bob-Secret-2')}\n`;
  });

  async function tlsClient(port: number, cert?: { cert: string; key: string }): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(port);
    await c.hello({ starttls: { ca, ...cert } });
    return c;
  }

  test('25 connections opened first, failures spread over them past authFailuresPerIp: the right password on an open one gets 421 and the connection closes', async () => {
    const s = await startTestServer({
      config: config('{ authFailuresPerIp: 10, authFailuresBeforeDelay: 100, maxConnectionsPerIp: 50 }'),
      files: { users },
    });
    try {
      const port = s.port('sub');
      const open: SmtpTestClient[] = [];
      for (let i = 0; i < 25; i++) open.push(await tlsClient(port));
      // Ten failures, round robin over the first ten connections: each connection has failed only once.
      for (let i = 0; i < 10; i++) assert.equal((await open[i]!.command(plain('alice@example.com', `guess-${i}`))).text, INVALID);
      assert.equal(await s.runtime.authFailures.count('127.0.0.1'), 10);
      // Every open connection — ones that failed and ones that never tried — now refuses AUTH, the right
      // password included, and is closed; LOGIN is refused before the client sends any credentials.
      assert.equal((await open[0]!.command(plain('alice@example.com', PASSWORD))).text, TOO_MANY);
      assert.ok(await open[0]!.waitClosed(), 'closed after the 421');
      assert.equal((await open[24]!.command(plain('alice@example.com', PASSWORD))).text, TOO_MANY);
      assert.ok(await open[24]!.waitClosed());
      assert.equal((await open[23]!.command('AUTH LOGIN')).text, TOO_MANY);
      assert.ok(await open[23]!.waitClosed());
      assert.equal((await open[22]!.command('AUTH PLAIN')).text, TOO_MANY);
      // The refusals themselves are not failures of a password (the count stays), and they are logged.
      assert.equal(await s.runtime.authFailures.count('127.0.0.1'), 10);
      assert.equal(s.logs.filter((l) => l.msg === 'AUTH refused: too many authentication failures from this address' && l.ip === '127.0.0.1').length, 4);
      // Other commands still work on the open connections; new connections are refused at once.
      assert.equal((await open[5]!.command('NOOP')).code, 250);
      const late = await SmtpTestClient.connect(port);
      assert.equal((await late.read()).text, TOO_MANY);
      for (const c of open) c.destroy();
    } finally {
      await s.stop();
    }
  });

  test('25 wrong passwords sent at once over 25 open connections: exactly authFailuresPerIp are checked, the rest get 421', async () => {
    const s = await startTestServer({
      config: config('{ authFailuresPerIp: 10, authFailuresBeforeDelay: 100, maxConnectionsPerIp: 50 }'),
      files: { users },
    });
    try {
      const port = s.port('sub');
      const open: SmtpTestClient[] = [];
      for (let i = 0; i < 25; i++) open.push(await tlsClient(port));
      // All written before any reply is read: the attempts are decided in parallel.
      for (const [i, c] of open.entries()) c.write(plain('alice@example.com', `guess-${i}`));
      const replies = await Promise.all(open.map((c) => c.read(30_000)));
      const count = (text: string): number => replies.filter((r) => r.text === text).length;
      assert.deepEqual([count(INVALID), count(TOO_MANY)], [10, 15], replies.map((r) => r.text).join('\n'));
      assert.equal(await s.runtime.authFailures.count('127.0.0.1'), 10, 'no guess beyond the limit was checked');
      for (const c of open) c.destroy();
    } finally {
      await s.stop();
    }
  });

  test('an AUTH whose SASL exchange began below the limit is refused if the limit was reached meanwhile', async () => {
    const s = await startTestServer({ config: config('{ authFailuresPerIp: 2, authFailuresBeforeDelay: 100 }'), files: { users } });
    try {
      const port = s.port('sub');
      const slow = await tlsClient(port);
      const other = await tlsClient(port);
      assert.equal((await slow.command('AUTH LOGIN')).code, 334);
      assert.equal((await slow.command(b64('alice@example.com'))).code, 334);
      // Meanwhile the other connection fails twice: the limit.
      assert.equal((await other.command(plain('alice@example.com', 'x'))).text, INVALID);
      assert.equal((await other.command(plain('alice@example.com', 'y'))).text, INVALID);
      assert.equal((await slow.command(b64(PASSWORD))).text, TOO_MANY);
      assert.ok(await slow.waitClosed());
      other.destroy();
    } finally {
      await s.stop();
    }
  });

  /** Exactly what the server sent back for one AUTH PLAIN line (its own TLS connection), CRLF included. */
  async function rawAuthReply(port: number, line: string, cert?: { cert: string; key: string }): Promise<Buffer> {
    const c = await tlsClient(port, cert);
    const socket = c.socket;
    socket.removeAllListeners('data');
    let received = '';
    const reply = new Promise<Buffer>((resolve) => {
      socket.on('data', (chunk: string) => {
        received += chunk;
        if (/^\d{3} [^\r\n]*\r\n$/.test(received)) resolve(Buffer.from(received, 'utf8'));
      });
    });
    socket.write(`${line}\r\n`);
    const bytes = await reply;
    socket.destroy();
    return bytes;
  }

  test('right password with a foreign authzid, right password for another account than the certificate, wrong password: byte-identical 535 replies', async () => {
    const s = await startTestServer({ config: config('{ authFailuresPerIp: 1000, authFailuresBeforeDelay: 100 }'), files: { users } });
    try {
      const port = s.port('sub');
      const wrong = await rawAuthReply(port, plain('alice@example.com', 'not-the-password', 'bob@example.com'));
      const rightWithAuthzid = await rawAuthReply(port, plain('alice@example.com', PASSWORD, 'bob@example.com'));
      const rightOtherAccount = await rawAuthReply(port, plain('bob@example.com', 'bob-Secret-2'), alice);
      const wrongOtherAccount = await rawAuthReply(port, plain('bob@example.com', 'nope'), alice);
      assert.equal(wrong.toString('latin1'), `${INVALID}\r\n`);
      assert.deepEqual(rightWithAuthzid, wrong);
      assert.deepEqual(rightOtherAccount, wrong);
      assert.deepEqual(wrongOtherAccount, wrong);
      // The administrator still learns why, at info level, with the client address and no stack trace.
      const failed = s.logs.filter((l) => l.msg === 'authentication failed');
      assert.deepEqual(failed.map((l) => [l.reason, l.ip, l.level]), [
        ['bad-password', '127.0.0.1', 30],
        ['authzid-not-permitted', '127.0.0.1', 30],
        ['certificate-account-mismatch', '127.0.0.1', 30],
        ['bad-password', '127.0.0.1', 30],
      ]);
      for (const l of failed) assert.equal(l.err, undefined);
    } finally {
      await s.stop();
    }
  });
});

describe('failures-across-listeners', () => {
  // AUTH failures are counted per address over every listener (switching ports escapes nothing), but they stop
  // logins only where there is one: an MX without AUTH keeps taking that address's mail.
  let pki: TestPki;
  let ca: string;
  let users: string;

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    users = `alice@example.com:${await hashPassword('alice-Secret-1')}\n`;
  });

  test('an address over authFailuresPerIp on submission is refused at connect there and on every listener with AUTH, not on the MX without it', async () => {
    const tls = `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }`;
    const s = await startTestServer({
      config: `
localDomains: [example.com]
users: ./users
listeners:
  - { name: mx, listen: "127.0.0.1:0", reverseDns: false, limits: { greetingDelayMs: 0, authFailuresPerIp: 3 } }
  - { name: sub, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [PLAIN] }, limits: { authFailuresPerIp: 3, authFailuresBeforeDelay: 100 } }
  - { name: sub2, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [PLAIN] }, limits: { authFailuresPerIp: 3 } }
`,
      files: { users },
    });
    try {
      const guesser = await SmtpTestClient.connect(s.port('sub'));
      await guesser.hello({ starttls: { ca } });
      for (let i = 0; i < 3; i++) assert.equal((await guesser.command(plain('alice@example.com', `guess-${i}`))).text, INVALID);
      guesser.destroy();
      // Another listener with AUTH: the count is the address's, whichever port it guessed on.
      const other = await SmtpTestClient.connect(s.port('sub2'));
      assert.equal((await other.read()).text, TOO_MANY);
      other.destroy();
      // The MX offers no AUTH: nothing to guess there, its mail is taken.
      const mx = await SmtpTestClient.connect(s.port('mx'));
      await mx.hello(); // throws on anything but 220
      assert.equal((await mx.sendMail('sender@elsewhere.example', ['alice@example.com'])).code, 250);
      assert.equal((await mx.command('AUTH PLAIN')).code, 500, 'AUTH is not a command of the MX');
      mx.destroy();
    } finally {
      await s.stop();
    }
  });
});

describe('failures-per-account', () => {
  // Password guessing spread over many client addresses (a botnet: each address below authFailuresPerIp, all at one
  // account) is slowed at the account: limits.authFailuresPerAccount. It must not hand a stranger a way to lock the
  // real user out: a certificate login (EXTERNAL), and password logins from an address that logged in as the account
  // before, pass the lock. Real sockets from distinct loopback addresses (127.0.0.x), a real server (and, for the count
  // over servers, two servers sharing one Redis).
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
});

describe('failures-per-account-hostile', () => {
  // limits.authFailuresPerAccount against a botnet: the limit must hold for guesses sent all at once (fired in parallel,
  // not one after another), on one server and on two sharing Redis. Real sockets from distinct loopback addresses, real servers.
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
});

describe('script-failure-counted', () => {
  // An auth script that fails (throws, times out) gets 454 4.7.0, which was never counted as a failed AUTH: a
  // script that fails only for a wrong password (here the default scripts' pattern of logging the built-in rule's
  // account, null when it refused) answered 454 to every wrong guess and 235 to the right one, without limit.
  // A failure is now counted unless the built-in rule found the credentials right; a deliberate defer() is not.
  const FAILED = '454 4.7.0 Temporary policy failure, try again later';
  const PASSWORD = 'alice-Secret-1';

  let sub: Submission;
  before(async () => {
    sub = await startSubmission('{ authFailuresPerIp: 3, authFailuresBeforeDelay: 100 }', {
      users: { 'alice@example.com': PASSWORD },
      scripts: {
        'auth.ts': `export default (ctx) => {
        if (ctx.auth.password === 'directory-down') return defer();
        log('login of ' + ctx.builtin.username.toUpperCase()); // null when the built-in rule refused: a TypeError
      };`,
      },
    });
  });
  after(() => sub.server.stop());

  async function attempt(password: string): Promise<string> {
    const c = await sub.tlsClient();
    const r = await c.command(plain('alice@example.com', password));
    c.destroy();
    return r.text;
  }

  test('wrong passwords that make the auth script fail are counted: at authFailuresPerIp the address is refused before the right one', async () => {
    // A deliberate defer() is the script's decision (a directory down) and is not counted.
    for (let i = 0; i < 5; i++) assert.equal(await attempt('directory-down'), FAILED);
    for (let i = 0; i < 3; i++) assert.equal(await attempt(`guess-${i}`), FAILED, `guess ${i}`);
    // The address reached its limit: refused at the greeting, before the right password can be tried.
    const c = await SmtpTestClient.connect(sub.server.port('sub'));
    assert.equal((await c.read()).text, TOO_MANY);
    c.destroy();
    const failed = sub.server.logs.filter((l) => l.msg === 'authentication failed').map((l) => l.reason);
    assert.deepEqual(failed, Array(3).fill('script failed (built-in: bad-password)'));
  });
});
