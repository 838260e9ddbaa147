// One SMTP session that outlives reloads: what it does after the configuration changed under it must be
// decided by the configuration in force, not the one it connected under (a connection may stay open for
// hours, kept alive by its transactions).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { INVALID, plain, submissionConfig } from '../auth/helpers/submission.ts';

const OK = '235 2.7.0 Authentication successful';

let pki: TestPki;
let ca: string;
let server: TestServer;

const users = async (password: string): Promise<string> => `alice@example.com:${await hashPassword(password)}\n`;

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  server = await startTestServer({
    config: submissionConfig(pki, '{ greetingDelayMs: 0, authFailuresPerIp: 1000, authFailuresBeforeDelay: 100 }'),
    files: { users: await users('old-Secret-1') },
    scripts: { 'helo.ts': `export default (ctx) => ctx.helo.name === 'blocked.example' ? reject('old helo script') : undefined;` },
  });
});
after(() => server.stop());

test('a password changed and reloaded while a session stays open: its AUTH is checked against the new users file', async () => {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: { ca } });
  await writeFile(join(server.dir, 'users'), await users('new-Secret-2'));
  const outcome = await server.reloader.reload('SIGHUP');
  assert.equal(outcome.ok, true, outcome.errors.join('\n'));
  assert.equal((await c.command(plain('alice@example.com', 'old-Secret-1'))).text, INVALID, 'the old password no longer logs in');
  assert.equal((await c.command(plain('alice@example.com', 'new-Secret-2'))).text, OK);
  await c.quit();
  await writeFile(join(server.dir, 'users'), await users('old-Secret-1'));
  assert.equal((await server.reloader.reload('SIGHUP')).ok, true);
});

test('a helo script replaced while a session stays open: its next EHLO runs the new one; one mid-transaction keeps the old', async () => {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: { ca } });
  assert.equal((await c.command('EHLO blocked.example')).text, '550 5.7.1 old helo script');
  await writeFile(join(server.dir, 'scripts', 'helo.ts'), `export default (ctx) => ctx.helo.name === 'blocked.example' ? reject('new helo script') : undefined;`);
  assert.equal((await server.reloader.reload('SIGHUP')).ok, true);
  assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
  await writeFile(join(server.dir, 'scripts', 'helo.ts'), `export default (ctx) => ctx.helo.name === 'blocked.example' ? reject('third helo script') : undefined;`);
  assert.equal((await server.reloader.reload('SIGHUP')).ok, true);
  assert.equal((await c.command('EHLO blocked.example')).text, '550 5.7.1 new helo script', 'the transaction\'s generation');
  assert.equal((await c.command('RSET')).code, 250);
  assert.equal((await c.command('EHLO blocked.example')).text, '550 5.7.1 third helo script');
  await c.quit();
});
