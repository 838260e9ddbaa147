// PLAIN and LOGIN responses that are not base64 (RFC 4954 §4: the server MUST reject a response it cannot
// decode, with 501). Node's base64 decoder skips characters outside the alphabet and stops at the padding,
// so `AGFsaWNl!!QGV4…` or a password line with an `@` in it still logged in, and a token with junk after
// its padding was read up to the padding. Such responses now get the 501 EXTERNAL's already got; the
// well-formed ones, cancelling with `*`, and `=` keep their meaning.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { SmtpTestClient } from '../helpers/smtp-client.ts';
import { b64, startSubmission, type Submission } from './helpers/submission.ts';

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
