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
import type { PosternConnection } from '../../engine/smtp/postern-connection.ts';
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
    config: `${submissionConfig(pki, '{ greetingDelayMs: 0, authFailuresPerIp: 1000, authFailuresBeforeDelay: 100 }')}
  - name: capped
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: none }
    limits: { greetingDelayMs: 0, maxMessagesPerConnection: 3 }
`,
    files: { users: await users('old-Secret-1') },
    scripts: { 'helo.ts': `export default (ctx) => ctx.helo.name === 'blocked.example' ? reject('old helo script') : undefined;` },
  });
});
after(() => server.stop());

/** `file` (in the server's folder) written, and the generation built from it in force. */
async function reloadedWith(file: string, text: string): Promise<void> {
  const before = server.runtime.generation;
  await writeFile(join(server.dir, file), text);
  await server.reloader.reload('SIGHUP');
  await server.reloader.whenIdle();
  assert.notEqual(server.runtime.generation, before, `${file}: a new generation`);
}

test('a password changed and reloaded while a session stays open: its AUTH is checked against the new users file', async () => {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: { ca } });
  await reloadedWith('users', await users('new-Secret-2'));
  assert.equal((await c.command(plain('alice@example.com', 'old-Secret-1'))).text, INVALID, 'the old password no longer logs in');
  assert.equal((await c.command(plain('alice@example.com', 'new-Secret-2'))).text, OK);
  await c.quit();
  await reloadedWith('users', await users('old-Secret-1'));
});

test('a helo script replaced while a session stays open: its next EHLO runs the new one; one mid-transaction keeps the old', async () => {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: { ca } });
  assert.equal((await c.command('EHLO blocked.example')).text, '550 5.7.1 old helo script');
  await reloadedWith('scripts/helo.ts', `export default (ctx) => ctx.helo.name === 'blocked.example' ? reject('new helo script') : undefined;`);
  assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
  await reloadedWith('scripts/helo.ts', `export default (ctx) => ctx.helo.name === 'blocked.example' ? reject('third helo script') : undefined;`);
  assert.equal((await c.command('EHLO blocked.example')).text, '550 5.7.1 new helo script', 'the transaction\'s generation');
  assert.equal((await c.command('RSET')).code, 250);
  assert.equal((await c.command('EHLO blocked.example')).text, '550 5.7.1 third helo script');
  await c.quit();
});

test('a session kept open with NOOPs across reloads holds no retired generation: its next command lets go of it', async () => {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: { ca } });
  const conn = [...server.servers.get('sub')!.connections][0] as unknown as PosternConnection;
  const held = [conn.state.generation];
  for (let i = 0; i < 5; i++) {
    await reloadedWith('users', await users(`pass-${i}-Secret`));
    assert.equal((await c.command('NOOP')).code, 250);
    assert.equal(conn.state.generation, server.runtime.generation, 'the session is on the generation in force');
    held.push(conn.state.generation);
  }
  // Each retired generation (and its isolates) was let go as soon as the session moved on.
  assert.deepEqual(held.slice(0, -1).map((g) => g.disposed), [true, true, true, true, true]);
  await c.quit();
  await reloadedWith('users', await users('old-Secret-1'));
});

test('a password changed after the login: the session\'s next MAIL FROM gets 421 and the close; the new password logs in on a new one', async () => {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: { ca } });
  assert.equal((await c.command(plain('alice@example.com', 'old-Secret-1'))).text, OK);
  assert.equal((await c.sendMail('alice@example.com', ['friend@elsewhere.example'])).code, 250, 'logged in: may relay');
  await reloadedWith('users', await users('leaked-then-reset-3'));
  assert.equal((await c.command('MAIL FROM:<alice@example.com>')).text, '421 4.7.0 Login no longer valid, log in again');
  assert.ok(await c.waitClosed());
  assert.ok(server.logs.some((l) => l.msg === 'password changed or user removed since the login: MAIL FROM refused' && l.user === 'alice@example.com'));
  const again = await SmtpTestClient.connect(server.port('sub'));
  await again.hello({ starttls: { ca } });
  assert.equal((await again.command(plain('alice@example.com', 'leaked-then-reset-3'))).text, OK);
  assert.equal((await again.sendMail('alice@example.com', ['friend@elsewhere.example'])).code, 250);
  // A reload that leaves the entry as it was (another file changed) keeps the login.
  await reloadedWith('scripts/helo.ts', 'export default () => undefined;');
  assert.equal((await again.sendMail('alice@example.com', ['friend@elsewhere.example'])).code, 250);
  await again.quit();
  await reloadedWith('users', await users('old-Secret-1'));
});

test('limits.maxMessagesPerConnection: after its 3rd message a session\'s MAIL FROM gets 421 and the close; refusals and RSETs do not count', async () => {
  const c = await SmtpTestClient.connect(server.port('capped'));
  await c.hello();
  for (let i = 0; i < 3; i++) {
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    assert.equal((await c.command('RSET')).code, 250);
    assert.equal((await c.sendMail('a@example.org', ['b@example.com'])).code, 250);
  }
  assert.equal((await c.command('MAIL FROM:<a@example.org>')).text, '421 4.7.0 Error: too many messages in this connection, reconnect');
  assert.ok(await c.waitClosed());
  const next = await SmtpTestClient.connect(server.port('capped'));
  await next.hello();
  assert.equal((await next.sendMail('a@example.org', ['b@example.com'])).code, 250, 'a new connection starts again');
  await next.quit();
});
