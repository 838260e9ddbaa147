// Credentials a client sends where no AUTH exchange takes them — pipelined behind an AUTH that was refused, or
// sent out of step after a failed one — are read as commands and refused: no log line at any level, trace included,
// holds them, their base64, or their base64 upper-cased. smtp-server's trace line for each command (`C:`) named
// it by its first word upper-cased: for such a line, the base64 of the password with only its letters' case lost,
// which a few thousand guesses undo. Real server logging at trace, real sockets.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';

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
