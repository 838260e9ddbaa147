// Password AUTH (PLAIN, LOGIN) against a users file on a real server: replies on the wire, the refusal
// before STARTTLS, the certificate-account rule and its override by an auth script, the slow-down and the
// per-IP limit, and the Received header of an authenticated submission.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, type Reply } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { loadUsersFile } from '../../engine/auth/users-file.ts';
import { INVALID, TOO_MANY, b64, plain, submissionConfig } from './helpers/submission.ts';

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
