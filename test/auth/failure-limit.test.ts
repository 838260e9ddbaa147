// The per-IP auth-failure limit counted across connections that are already open (a guesser opens its
// connections first, then spreads its attempts over them), and failure replies that do not tell a guesser
// whether the password was right.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { INVALID, TOO_MANY, b64, plain, submissionConfig } from './helpers/submission.ts';

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
