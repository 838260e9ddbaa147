// Logins: password AUTH, SASL's base64, the identity a script accepts, the latest login of a known address and
// credentials kept out of the trace. One file for what were several (one test process and one load of the engine
// instead of one each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, type Reply, type TlsClientOptions } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki, clientTlsOptions } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { loadUsersFile } from '../../engine/auth/users-file.ts';
import { INVALID, TOO_MANY, b64, plain, submissionConfig, startSubmission, type Submission } from './helpers/submission.ts';
import { MemoryCounterStore } from '../../engine/store/index.ts';
import { configYaml, testListener } from '../helpers/config.ts';

describe('password-auth', () => {
  // Password AUTH (PLAIN, LOGIN) against a users file on a real server: replies on the wire, the refusal
  // before STARTTLS, the certificate-account rule and its override by an auth script, the slow-down and the
  // per-IP limit, and the Received header of an authenticated submission.
  const PASSWORDS = { 'alice@example.com': 'alice-Secret-1', 'bob@example.com': 'b0b pass with spaces' } as const;
  const OK = '235 2.7.0 Authentication successful';
  const BEFORE_TLS = '538 5.7.11 Encryption required for requested authentication mechanism (issue STARTTLS first)';

  let pki: TestPki;
  let ca: string;
  let alice: { cert: string; key: string };
  let usersFile: string;
  let server: TestServer;


  const config = (limits: string): string => submissionConfig(pki, limits, { crl: true });

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    alice = { cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') };
    usersFile = '# test users\n';
    for (const [name, password] of Object.entries(PASSWORDS)) usersFile += `${name}:${await hashPassword(password)}\n`;
    // Every test here fails some AUTHs from 127.0.0.1: a per-IP limit and slow-down out of the way.
    server = await startTestServer({
      config: config('{ authFailuresPerIp: 1000, authFailuresBeforeDelay: 100 }'),
      files: { users: usersFile },
    });
  });
  after(() => server.stop());

  /** Connected, greeted, EHLO'd, STARTTLS done (presenting `cert` if given) and EHLO'd again. */
  async function tlsClient(port: number, cert?: { cert: string; key: string }): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(port);
    await c.hello({ starttls: { ca, ...cert } });
    return c;
  }

  /** AUTH LOGIN as three round trips; returns the three replies. */
  async function login(c: SmtpTestClient, user: string, password: string): Promise<[Reply, Reply, Reply]> {
    const first = await c.command('AUTH LOGIN');
    const second = await c.command(b64(user));
    const third = await c.command(b64(password));
    return [first, second, third];
  }

  test('AUTH PLAIN (initial response and continuation) and AUTH LOGIN with the right password: 235 2.7.0', async () => {
    const port = server.port('sub');
    const c1 = await tlsClient(port);
    assert.match(c1.transcript.join('\n').split('STARTTLS').pop()!, /^S: 250-AUTH PLAIN LOGIN$/m, 'offered after TLS');
    assert.equal((await c1.command(plain('alice@example.com', PASSWORDS['alice@example.com']))).text, OK);
    assert.equal((await c1.command(plain('alice@example.com', PASSWORDS['alice@example.com']))).text, '503 5.5.1 Already authenticated');
    // Authenticated: may relay.
    assert.match((await c1.sendMail('alice@example.com', ['friend@elsewhere.example'])).text, /^250 2\.0\.0 Ok: queued as [0-9a-z]+$/);
    await c1.quit();

    const c2 = await tlsClient(port);
    assert.equal((await c2.command('AUTH PLAIN')).text, '334 ');
    assert.equal((await c2.command(b64(`\0bob@example.com\0${PASSWORDS['bob@example.com']}`))).text, OK);
    await c2.quit();

    const c3 = await tlsClient(port);
    const [user, pass, done] = await login(c3, 'bob@example.com', PASSWORDS['bob@example.com']);
    assert.equal(user.text, '334 VXNlcm5hbWU6'); // "Username:"
    assert.equal(pass.text, '334 UGFzc3dvcmQ6'); // "Password:"
    assert.equal(done.text, OK);
    await c3.quit();

    // Usernames are case-insensitive (the users file is lowercased); the authzid may repeat the username.
    const c4 = await tlsClient(port);
    assert.equal((await c4.command(plain('Alice@Example.COM', PASSWORDS['alice@example.com'], 'alice@example.com'))).text, OK);
    await c4.quit();
    // …but another authorization identity is refused, even with the right password.
    const c5 = await tlsClient(port);
    assert.equal((await c5.command(plain('alice@example.com', PASSWORDS['alice@example.com'], 'bob@example.com'))).text, INVALID);
    await c5.quit();
  });

  test('wrong password, unknown user, empty password (PLAIN and LOGIN): 535 5.7.8, and counted as failures', async () => {
    const port = server.port('sub');
    const c = await tlsClient(port);
    const failuresBefore = (await server.runtime.authFailures.count('127.0.0.1'));
    // Wrong password, including another user's password and the right one with a trailing newline.
    assert.equal((await c.command(plain('alice@example.com', 'wrong'))).text, INVALID);
    assert.equal((await c.command(plain('alice@example.com', PASSWORDS['bob@example.com']))).text, INVALID);
    assert.equal((await c.command(plain('alice@example.com', `${PASSWORDS['alice@example.com']}\n`))).text, INVALID);
    assert.equal((await login(c, 'alice@example.com', 'wrong'))[2].text, INVALID);
    // Unknown user, even with a password that is valid for someone else.
    assert.equal((await c.command(plain('carol@example.com', PASSWORDS['alice@example.com']))).text, INVALID);
    assert.equal((await login(c, 'carol@example.com', 'anything'))[2].text, INVALID);
    // Empty password: PLAIN with nothing after the second NUL; LOGIN with an empty line and with "=".
    assert.equal((await c.command(plain('alice@example.com', ''))).text, INVALID);
    assert.equal((await c.command('AUTH LOGIN')).code, 334);
    assert.equal((await c.command(b64('alice@example.com'))).code, 334);
    assert.equal((await c.command('')).text, INVALID);
    assert.equal((await c.command('AUTH LOGIN')).code, 334);
    assert.equal((await c.command(b64('alice@example.com'))).code, 334);
    assert.equal((await c.command('=')).text, INVALID);
    assert.equal((await server.runtime.authFailures.count('127.0.0.1')) - failuresBefore, 9, 'each 535 counts against the IP');
    // Failures are not sticky: the right password still works on the same connection.
    assert.equal((await c.command(plain('alice@example.com', PASSWORDS['alice@example.com']))).text, OK);
    await c.quit();
  });

  test('a failed AUTH with a username the size of a command line is logged with the name cut at 256 characters', async () => {
    const c = await tlsClient(server.port('sub'));
    const long = `${'x'.repeat(5000)}@example.com`;
    const logged = server.logs.length;
    assert.equal((await c.command(plain(long, 'wrong'))).text, INVALID);
    await c.quit();
    const line = server.logs.slice(logged).find((l) => l.msg === 'authentication failed');
    assert.equal(line?.username, `${'x'.repeat(256)}...`, 'cut: each failure would otherwise log the whole name');
  });

  test('a failed AUTH whose username holds a bidi override, a zero-width space or a line separator is logged with them escaped', async () => {
    // smtp-server itself refuses C0 and C1 controls in a PLAIN username (501).
    const c = await tlsClient(server.port('sub'));
    const logged = server.logs.length;
    assert.equal((await c.command(plain('adm\u202Enimda\u200b\u2028x@example.com', 'wrong'))).text, INVALID);
    await c.quit();
    const line = server.logs.slice(logged).find((l) => l.msg === 'authentication failed');
    assert.equal(line?.username, 'adm\\u{202e}nimda\\u{200b}\\u{2028}x@example.com');
  });

  test('a name sent decomposed (NFD, as macOS input gives "é") logs in as the users file\'s composed one; a file with both forms is one user twice', async () => {
    const composed = 'jos\u00e9@example.com';
    const decomposed = 'jose\u0301@example.com';
    const password = 'j0s\u00e9-pass';
    const s = await startTestServer({ config: config('{ authFailuresPerIp: 1000 }'), files: { users: `${composed}:${await hashPassword(password)}\n` } });
    try {
      const c = await tlsClient(s.port('sub'));
      assert.equal((await c.command(plain(decomposed.toUpperCase(), password))).text, OK);
      const r = await c.sendMail('jose@example.com', ['friend@elsewhere.example']);
      assert.equal((await s.runtime.spool.readEnvelope(/queued as (\S+)/.exec(r.text)![1]!)).session.authenticatedUser, composed);
      await c.quit();
    } finally {
      await s.stop();
    }
    // Two lines that look alike were two accounts, each with its own password, limits and log lines.
    const dir = await mkdtemp(join(tmpdir(), 'postern-users-nfc-'));
    try {
      const file = join(dir, 'users');
      const hash = await hashPassword(password);
      await writeFile(file, `${composed}:${hash}\n${decomposed}:${hash}\n`);
      await assert.rejects(loadUsersFile(file), new RegExp(`users:2: duplicate user "?${composed}"?$`));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('AUTH before STARTTLS on a STARTTLS listener: 538 5.7.11, no SASL exchange; 538, 504 and 501 are not counted as failures', async () => {
    const c = await SmtpTestClient.connect(server.port('sub'));
    const ehlo = await c.hello();
    assert.match(ehlo.text, /^250-STARTTLS$/m);
    assert.doesNotMatch(ehlo.text, /AUTH/, 'no AUTH offered in plaintext');
    const failuresBefore = (await server.runtime.authFailures.count('127.0.0.1'));
    assert.equal((await c.command(plain('alice@example.com', PASSWORDS['alice@example.com']))).text, BEFORE_TLS);
    assert.equal((await c.command('AUTH LOGIN')).text, BEFORE_TLS);
    assert.equal((await c.command('AUTH PLAIN')).text, BEFORE_TLS);
    assert.equal((await server.runtime.authFailures.count('127.0.0.1')), failuresBefore);
    // The session goes on: STARTTLS, then the same credentials work.
    await c.starttls({ ca });
    assert.equal((await c.command('EHLO client.example')).code, 250);
    // Neither an unknown mechanism (504) nor a malformed PLAIN token (501) counts as a failed AUTH.
    assert.equal((await c.command('AUTH CRAM-MD5')).text, '504 5.5.4 Unrecognized authentication type');
    assert.equal((await c.command('AUTH')).text, '501 5.5.4 Syntax: AUTH mechanism [initial-response]', 'no mechanism: a syntax error, not an unknown one');
    assert.equal((await c.command(`AUTH PLAIN ${b64('no-nul-separators')}`)).code, 501);
    assert.equal((await server.runtime.authFailures.count('127.0.0.1')), failuresBefore);
    assert.equal((await c.command(plain('alice@example.com', PASSWORDS['alice@example.com']))).text, OK);
    await c.quit();
  });

  test("with alice's certificate (identity alice@example.com): bob's right password is refused, alice's accepted", async () => {
    const c = await tlsClient(server.port('sub'), alice);
    // The same reply as a wrong password (a different one would confirm bob's password); the reason is logged.
    const logged = server.logs.length;
    assert.equal((await c.command(plain('bob@example.com', PASSWORDS['bob@example.com']))).text, INVALID);
    assert.equal((await login(c, 'bob@example.com', PASSWORDS['bob@example.com']))[2].text, INVALID);
    assert.deepEqual(server.logs.slice(logged).filter((l) => l.msg === 'authentication failed').map((l) => l.reason),
      ['certificate-account-mismatch', 'certificate-account-mismatch']);
    // A wrong password for the certificate's own account is still just invalid.
    assert.equal((await c.command(plain('alice@example.com', 'wrong'))).text, INVALID);
    assert.equal((await c.command(plain('alice@example.com', PASSWORDS['alice@example.com']))).text, OK);
    const r = await c.sendMail('alice@example.com', ['friend@elsewhere.example']);
    const id = /queued as ([0-9a-z]+)$/.exec(r.text)![1]!;
    const env = await server.runtime.spool.readEnvelope(id);
    assert.equal(env.session.authenticatedUser, 'alice@example.com');
    assert.equal(env.session.clientCertificate?.subject, 'emailAddress=alice@example.com,CN=alice,O=Example');
    await c.quit();
  });

  test('an auth script that accepts the certificate-account mismatch overrides the built-in refusal; an empty password never reaches it', async () => {
    const s = await startTestServer({
      config: config('{ authFailuresPerIp: 1000 }'),
      files: { users: usersFile },
      scripts: {
        'auth.ts': `
        export default (ctx) => {
          log('AUTH ' + ctx.auth.mechanism + ' ' + ctx.auth.username + ' ' + ctx.builtin.accepted + ' ' + ctx.builtin.reason);
          if (ctx.builtin.reason === 'certificate-account-mismatch') return accept();
          if (ctx.auth.username === 'anyone@example.com') return accept();
        };`,
      },
    });
    try {
      const c = await tlsClient(s.port('sub'), alice);
      // Without a verdict the built-in rule stands: a wrong password stays refused.
      assert.equal((await c.command(plain('bob@example.com', 'wrong'))).text, INVALID);
      assert.equal((await c.command(plain('bob@example.com', PASSWORDS['bob@example.com']))).text, OK);
      const r = await c.sendMail('bob@example.com', ['friend@elsewhere.example']);
      const id = /queued as ([0-9a-z]+)$/.exec(r.text)![1]!;
      assert.equal((await s.runtime.spool.readEnvelope(id)).session.authenticatedUser, 'bob@example.com');
      await c.quit();

      // A script may admit what the built-in rule refuses (an unknown user here), but never an empty password:
      // that attempt does not even reach the script.
      const d = await tlsClient(s.port('sub'));
      assert.equal((await d.command(plain('anyone@example.com', ''))).text, INVALID);
      assert.equal((await d.command(plain('anyone@example.com', 'whatever'))).text, OK);
      await d.quit();

      const seen = s.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('AUTH '));
      assert.deepEqual(seen, [
        'AUTH PLAIN bob@example.com false bad-password',
        'AUTH PLAIN bob@example.com false certificate-account-mismatch',
        'AUTH PLAIN anyone@example.com false bad-password',
      ]);
    } finally {
      await s.stop();
    }
  });

  test('repeated failures: replies slow down past authFailuresBeforeDelay; at authFailuresPerIp new connections get 421 4.7.0', async () => {
    const s = await startTestServer({
      config: config('{ authFailuresBeforeDelay: 1, authFailureDelayMs: 300, authFailuresPerIp: 4 }'),
      files: { users: usersFile },
    });
    try {
      const port = s.port('sub');
      const a = await tlsClient(port);
      const timed = async (): Promise<number> => {
        const start = performance.now();
        assert.equal((await a.command(plain('alice@example.com', 'wrong'))).text, INVALID);
        return performance.now() - start;
      };
      const t1 = await timed(); // failure 1 on this connection: no delay
      const t2 = await timed(); // failure 2: (2 - 1) × 300 ms
      const t3 = await timed(); // failure 3: (3 - 1) × 300 ms
      assert.ok(t2 >= 250, `2nd failure reply after ${t2.toFixed(0)} ms, expected >= 300`);
      assert.ok(t3 >= 550, `3rd failure reply after ${t3.toFixed(0)} ms, expected >= 600`);
      // Lower bounds only: load can make any reply later, never earlier (t1's "no delay" is not timed).
      void t1;
      assert.equal((await s.runtime.authFailures.count('127.0.0.1')), 3);

      // Three failures from this IP: still below the limit of 4, a new connection is greeted.
      const b = await SmtpTestClient.connect(port);
      assert.match((await b.read()).text, /^220 /);
      await b.command('EHLO client.example');
      await b.starttls({ ca });
      await b.command('EHLO client.example');
      assert.equal((await b.command(plain('bob@example.com', 'wrong'))).text, INVALID);
      assert.equal((await s.runtime.authFailures.count('127.0.0.1')), 4);

      // The fourth failure reached the limit: the next connection is refused at once and closed.
      const c = await SmtpTestClient.connect(port);
      assert.equal((await c.read()).text, TOO_MANY);
      assert.ok(await c.waitClosed(), 'closed after the 421');
      // Connections that were already open stay open, but their next AUTH is refused and ends them.
      assert.equal(a.closed, false);
      assert.equal((await a.command('NOOP')).code, 250);
      assert.equal((await a.command(plain('alice@example.com', PASSWORDS['alice@example.com']))).text, TOO_MANY);
      assert.ok(await a.waitClosed(), 'closed after the 421');
      await b.quit();
    } finally {
      await s.stop();
    }
  });

  /** The spooled file's Received header (up to the message's own first header) and its lines, however they end. */
  async function receivedOf(s: TestServer, id: string, firstOwnHeader: string): Promise<{ raw: string; lines: string[] }> {
    const spooled = (await s.runtime.spool.readMessage(id)).toString('utf8');
    const raw = spooled.slice(0, spooled.indexOf(`\r\n${firstOwnHeader}`) + 2);
    return { raw, lines: raw.split(/\r?\n/).slice(0, -1) };
  }

  const DATE_LINE = /^\t(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d [+-]\d{4}$/;

  test('Received header after AUTH PLAIN: ESMTPSA and "(Authenticated sender: …)"; without AUTH: ESMTPS and no such line', async () => {
    const port = server.port('sub');
    const c = await tlsClient(port);
    const cipher = (c.socket as TLSSocket).getCipher();
    assert.equal((await c.command(plain('Alice@Example.com', PASSWORDS['alice@example.com']))).text, OK);
    const r = await c.sendMail('alice@example.com', ['friend@elsewhere.example'], 'Subject: authenticated\r\n\r\nhello\r\n');
    const id = /queued as ([0-9a-z]+)$/.exec(r.text)![1]!;
    await c.quit();
    const authenticated = await receivedOf(server, id, 'Subject: authenticated');
    assert.deepEqual(authenticated.lines.slice(0, -1), [
      'Received: from client.example (unknown [127.0.0.1])',
      `\t(using ${cipher.version} with cipher ${cipher.standardName})`,
      '\t(Client did not present a certificate)',
      '\t(Authenticated sender: alice@example.com)',
      `\tby localhost (Postern) with ESMTPSA id ${id}`,
      '\tfor <friend@elsewhere.example>;',
    ]);
    assert.match(authenticated.lines.at(-1)!, DATE_LINE);

    // The same listener without AUTH (mail for a local domain): ESMTPS, no authenticated sender.
    const u = await tlsClient(port);
    const local = await u.sendMail('someone@elsewhere.example', ['bob@example.com']);
    const localId = /queued as ([0-9a-z]+)$/.exec(local.text)![1]!;
    await u.quit();
    const unauthenticated = await receivedOf(server, localId, 'Subject: test');
    assert.deepEqual(unauthenticated.lines.slice(0, -1), [
      'Received: from client.example (unknown [127.0.0.1])',
      `\t(using ${cipher.version} with cipher ${cipher.standardName})`,
      '\t(Client did not present a certificate)',
      `\tby localhost (Postern) with ESMTPS id ${localId}`,
      '\tfor <bob@example.com>;',
    ]);
    assert.match(unauthenticated.lines.at(-1)!, DATE_LINE);
  });

  test('the Received header ends every line with CRLF (no bare LF before "for <…>")', async () => {
    const c = await tlsClient(server.port('sub'));
    const r = await c.sendMail('someone@elsewhere.example', ['bob@example.com']);
    const id = /queued as ([0-9a-z]+)$/.exec(r.text)![1]!;
    await c.quit();
    const { raw, lines } = await receivedOf(server, id, 'Subject: test');
    assert.equal(raw, lines.map((l) => `${l}\r\n`).join(''));
  });
});

describe('sasl-base64', () => {
  // PLAIN and LOGIN responses that are not base64 (RFC 4954 §4: the server MUST reject a response it cannot
  // decode, with 501). Node's base64 decoder skips characters outside the alphabet and stops at the padding,
  // so `AGFsaWNl!!QGV4…` or a password line with an `@` in it still logged in, and a token with junk after
  // its padding was read up to the padding. Such responses now get the 501 EXTERNAL's already got; the
  // well-formed ones, cancelling with `*`, and `=` keep their meaning.
  const BAD_BASE64 = '501 5.5.2 Invalid base64 in SASL response';
  const OK = '235 2.7.0 Authentication successful';
  const TOKEN = b64('\0alice@example.com\0alice-Secret-1');

  let sub: Submission;
  before(async () => {
    sub = await startSubmission('{ authFailuresPerIp: 1000, authFailuresBeforeDelay: 100, greetingDelayMs: 0 }', { users: { 'alice@example.com': 'alice-Secret-1' } });
  });
  after(() => sub?.server.stop());

  const tlsClient = (): Promise<SmtpTestClient> => sub.tlsClient();

  test('PLAIN: an initial response or a continuation line that is not base64 is 501, never a login', async () => {
    const c = await tlsClient();
    for (const token of [`${TOKEN.slice(0, 8)}!!${TOKEN.slice(8)}`, `${TOKEN}==`, `${TOKEN}=AAAA`, TOKEN.slice(0, -1), `${TOKEN.slice(0, 8)}.${TOKEN.slice(8)}`]) {
      assert.equal((await c.command(`AUTH PLAIN ${token}`)).text, BAD_BASE64, token);
      assert.equal((await c.command('AUTH PLAIN')).code, 334);
      assert.equal((await c.command(token)).text, BAD_BASE64, `${token} after 334`);
    }
    assert.equal((await c.command('AUTH PLAIN')).code, 334);
    assert.equal((await c.command('*')).text, '501 5.7.0 Authentication aborted');
    assert.equal((await c.command('AUTH PLAIN =')).code, 501, 'an empty response is no credentials');
    assert.equal((await c.command(`AUTH PLAIN ${TOKEN}`)).text, OK);
    await c.quit();
  });

  test('LOGIN: a username or password line that is not base64 is 501, never a login', async () => {
    const c = await tlsClient();
    const user = b64('alice@example.com');
    const password = b64('alice-Secret-1');
    assert.equal((await c.command(`AUTH LOGIN ${user.slice(0, 4)}@${user.slice(4)}`)).text, BAD_BASE64);
    assert.equal((await c.command('AUTH LOGIN')).code, 334);
    assert.equal((await c.command(`${user}=`)).text, BAD_BASE64);
    assert.equal((await c.command(`AUTH LOGIN ${user}`)).code, 334);
    assert.equal((await c.command(`${password.slice(0, 4)}@${password.slice(4)}`)).text, BAD_BASE64);
    assert.equal((await c.command('AUTH LOGIN')).code, 334);
    assert.equal((await c.command(user)).code, 334);
    assert.equal((await c.command(`${password} x`)).text, BAD_BASE64);
    assert.equal((await c.command('AUTH LOGIN')).code, 334);
    assert.equal((await c.command(user)).code, 334);
    assert.equal((await c.command('*')).text, '501 5.7.0 Authentication aborted');
    assert.equal((await c.command(`AUTH LOGIN ${user}`)).code, 334);
    assert.equal((await c.command(password)).text, OK);
    await c.quit();
  });

  test('a real client (swaks) still logs in with PLAIN and LOGIN', async () => {
    // Checked by the replies of well-formed base64 from a client that is not ours.
    for (const type of ['PLAIN', 'LOGIN']) {
      const { execFile } = await import('node:child_process');
      const out = await new Promise<string>((resolve) => execFile('swaks', ['--server', '127.0.0.1', '--port', String(sub.server.port('sub')), '--tls',
        '--tls-ca-path', sub.pki.ca.cert, '--auth', type, '--auth-user', 'alice@example.com', '--auth-password', 'alice-Secret-1',
        '--from', 'alice@example.com', '--to', 'bob@example.com', '--quit-after', 'AUTH'], (_err, stdout, stderr) => resolve(stdout + stderr)));
      assert.match(out, /<~ {1,2}235 2\.7\.0 Authentication successful/, `${type}: ${out}`);
    }
  });
});

describe('script-accept-identity', () => {
  // Whom an auth script's accept() logs in. A bare accept() (a script that checked a certificate or a token, and
  // named nobody) took the authzid the client asked for, so `AUTH EXTERNAL <base64 of ceo@…>` with any certificate
  // the script liked logged in as the CEO; and it took the PLAIN/LOGIN name as the client wrote its case, so
  // `Carol@…`, `carol@…` and `CAROL@…` were three identities, each with its own limits.messagesPerIdentity count.
  const OK = '235 2.7.0 Authentication successful';
  const TOO_MUCH = /^450 4\.7\.1 /;

  let sub: Submission;
  let alice: TlsClientOptions;

  before(async () => {
    sub = await startSubmission('{ authFailuresPerIp: 1000, authFailuresBeforeDelay: 100, messagesPerIdentity: { count: 2, windowSeconds: 3600 } }', {
      auth: '{ mechanisms: [EXTERNAL, PLAIN, LOGIN], required: true }',
      // A device script (any certificate it was shown) and an app-token script (a token for any name), as written
      // without a thought for the authzid; and a master-user script that names the account it admits.
      scripts: {
        'auth.ts': `export default (ctx) => {
        if (ctx.auth.mechanism === 'EXTERNAL') return ctx.connection.clientCertificate ? accept() : undefined;
        if (ctx.auth.password === 'app-token') return accept();
        if (ctx.auth.password === 'master-token') return accept({ username: ctx.auth.authzid });
        if (ctx.auth.password === 'named-token') return accept({ username: 'Dave@Example.COM' });
      };`,
      },
    });
    alice = await clientTlsOptions(sub.pki, 'alice');
  });
  after(() => sub.server.stop());

  const tlsClient = (cert?: TlsClientOptions): Promise<SmtpTestClient> => sub.tlsClient(cert);

  /** The user a session logged in as, from the spooled envelope of a message it sends. */
  async function loggedInAs(c: SmtpTestClient, sender: string): Promise<string | null> {
    const r = await c.sendMail(sender, ['friend@example.com']);
    assert.equal(r.code, 250, r.text);
    return (await sub.server.runtime.spool.readEnvelope(/queued as (\S+)/.exec(r.text)![1]!)).session.authenticatedUser;
  }

  test("a bare accept() of EXTERNAL never logs in as the authzid the client asked for: alice's certificate asking for the CEO gets 535", async () => {
    const c = await tlsClient(alice);
    assert.equal((await c.command(`AUTH EXTERNAL ${b64('ceo@example.com')}`)).text, INVALID);
    assert.equal((await c.command('MAIL FROM:<ceo@example.com>')).code, 530, 'not logged in');
    // Her own identity, asked for or implied, is what the script accepted.
    assert.equal((await c.command(`AUTH EXTERNAL ${b64('Alice@Example.com')}`)).text, OK);
    assert.equal(await loggedInAs(c, 'alice@example.com'), 'alice@example.com');
    await c.quit();
    const d = await tlsClient(alice);
    assert.equal((await d.command('AUTH EXTERNAL =')).text, OK);
    assert.equal(await loggedInAs(d, 'alice@example.com'), 'alice@example.com');
    await d.quit();
    const reasons = sub.server.logs.filter((l) => l.msg === 'authentication failed').map((l) => l.reason);
    assert.ok(reasons.includes('script accept without a username, and none the client proved'), JSON.stringify(reasons));
  });

  test('a bare accept() of PLAIN or LOGIN: a foreign authzid, or a name that is no plain account, is 535; a script that names the account admits it', async () => {
    const c = await tlsClient();
    assert.equal((await c.command(plain('carol@example.com', 'app-token', 'ceo@example.com'))).text, INVALID);
    assert.equal((await c.command(plain('carol example', 'app-token'))).text, INVALID);
    assert.equal((await c.command(plain('carol@example.com\u2028X-Spam: no', 'app-token'))).text, INVALID);
    // U+212A KELVIN SIGN lowercases (and normalizes) to k: a name of the script's directory, never kate's account.
    assert.equal((await c.command(plain('\u212Aate@example.com', 'app-token'))).text, INVALID);
    // Acting for another account is for a script to allow by name (Dovecot's master users).
    assert.equal((await c.command(plain('carol@example.com', 'master-token', 'CEO@example.com'))).text, OK);
    assert.equal(await loggedInAs(c, 'ceo@example.com'), 'ceo@example.com');
    await c.quit();
    // A name typed on a Mac comes decomposed (NFD): the one account of its composed form.
    const d = await tlsClient();
    assert.equal((await d.command(plain('Jos\u00e9@example.com'.normalize('NFD'), 'app-token'))).text, OK);
    assert.equal(await loggedInAs(d, 'jose@example.com'), 'jos\u00e9@example.com');
    await d.quit();
  });

  test("one account whatever its case: Carol@, carol@ and CAROL@ share one messagesPerIdentity count, and a script's named account is lowercased", async () => {
    const seen: Array<string | null> = [];
    for (const name of ['Carol@Example.com', 'carol@example.com']) {
      const c = await tlsClient();
      assert.equal((await c.command(plain(name, 'app-token'))).text, OK);
      seen.push(await loggedInAs(c, 'carol@example.com'));
      await c.quit();
    }
    assert.deepEqual(seen, ['carol@example.com', 'carol@example.com']);
    const c = await tlsClient();
    await c.command('AUTH LOGIN');
    await c.command(b64('CAROL@EXAMPLE.COM'));
    assert.equal((await c.command(b64('app-token'))).text, OK);
    assert.match((await c.command('MAIL FROM:<carol@example.com>')).text, TOO_MUCH, 'the third message of the one account');
    await c.quit();
    const d = await tlsClient();
    assert.equal((await d.command(plain('anyone', 'named-token'))).text, OK);
    assert.equal(await loggedInAs(d, 'dave@example.com'), 'dave@example.com');
    await d.quit();
  });
});

describe('known-address-latest-login', () => {
  // An address that logged in as an account within the last 30 days passes the account's limits.authFailuresPerAccount
  // lock: counted from its latest login, not its first. A user who logs in from home every day must not lose the
  // exemption 30 days after the first of those logins. A real server and real sockets; the clock moved on by the test
  // (the store's clock and Date.now together), since the exemption is a month long.
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
});

describe('credentials-at-trace', () => {
  // Credentials a client sends where no AUTH exchange takes them — pipelined behind an AUTH that was refused, or
  // sent out of step after a failed one — are read as commands and refused: no log line at any level, trace included,
  // holds them, their base64, or their base64 upper-cased. smtp-server's trace line for each command (`C:`) named
  // it by its first word upper-cased: for such a line, the base64 of the password with only its letters' case lost,
  // which a few thousand guesses undo. Real server logging at trace, real sockets.
  const SECRET = 'alice-Secret-1';
  const USER = 'alice@example.com';
  const b64 = (s: string): string => Buffer.from(s).toString('base64');
  /** What must appear in no line, compared without case. */
  const FORBIDDEN = [SECRET, b64(SECRET), b64(`\0${USER}\0${SECRET}`), b64(USER)].map((s) => s.toLowerCase());

  let s: TestServer;
  before(async () => {
    s = await startTestServer({
      logLevel: 'trace',
      files: { users: `${USER}:${await hashPassword(SECRET)}\n` },
      config: configYaml({
        users: './users', localDomains: ['example.test'],
        listeners: [
          testListener('noauth', { tls: { mode: 'none' } }),
          testListener('sub', { tls: { mode: 'none' }, auth: { mechanisms: ['PLAIN', 'LOGIN'] }, limits: { authFailuresPerIp: 1000, authFailuresBeforeDelay: 1000 } }),
        ],
      }),
    });
  });
  after(() => s?.stop());

  function leaks(from: number): string[] {
    return s.logs.slice(from).map((l) => JSON.stringify(l)).filter((j) => FORBIDDEN.some((f) => j.toLowerCase().includes(f)));
  }

  test('AUTH LOGIN pipelined where AUTH is not offered: its username and password lines are refused and logged nowhere', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const c = await SmtpTestClient.connect(s.port('noauth'));
    await c.read();
    await c.command('EHLO client.example');
    c.socket.write(`AUTH LOGIN\r\n${b64(USER)}\r\n${b64(SECRET)}\r\n`);
    const replies = [await c.read(), await c.read(), await c.read()];
    assert.deepEqual(replies.map((r) => r.code), [500, 500, 500]);
    await c.quit();
    assert.ok(s.logs.slice(mark).some((l) => l.level === 10), 'trace lines were written');
    assert.deepEqual(leaks(mark), []);
  });

  test('a PLAIN response sent after its AUTH was refused (unknown mechanism), and a LOGIN password sent after a cancelled exchange: logged nowhere', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const c = await SmtpTestClient.connect(s.port('sub'));
    await c.read();
    await c.command('EHLO client.example');
    c.socket.write(`AUTH CRAM-MD5\r\n${b64(`\0${USER}\0${SECRET}`)}\r\n`);
    assert.deepEqual([(await c.read()).code, (await c.read()).code], [504, 500]);
    assert.equal((await c.command('AUTH LOGIN')).code, 334);
    assert.equal((await c.command('*')).code, 501);
    assert.equal((await c.command(b64(SECRET))).code, 500);
    assert.equal((await c.command(`AUTH PLAIN ${b64(`\0${USER}\0wrong`)}`)).code, 535);
    assert.equal((await c.command(b64(SECRET))).code, 500);
    await c.quit();
    assert.deepEqual(leaks(mark), []);
  });
});
