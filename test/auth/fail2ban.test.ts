// The fail2ban filter shipped in examples/fail2ban matches the server's own auth-failure lines, and only
// them: fail2ban-regex (the real tool) over a log a real server wrote while a client failed AUTH twice and
// then logged in.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { hashPassword, needs, run } from '../helpers/example.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { startAccounts, USERS, PASSWORDS } from '../accounts/helpers.ts';

const FILTER = new URL('../../examples/fail2ban/postern.conf', import.meta.url).pathname;
let s: TestServer | undefined;
let accounts: TestServer | undefined;
after(() => s?.stop());
after(() => accounts?.stop());
const scratch = useScratchDir('postern-fail2ban-');

test('fail2ban-regex finds each failed AUTH with the client address, and nothing else', needs('fail2ban-regex'), async () => {
  s = await startTestServer({
    config: `
users: ./users
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresBeforeDelay: 5 }
`,
    files: { users: `alice@example.com: ${await hashPassword('right-Password-1')}\n` },
  });
  const plain = (password: string): string => `AUTH PLAIN ${Buffer.from(`\0alice@example.com\0${password}`).toString('base64')}`;
  const c = await SmtpTestClient.connect(s.port('sub'));
  await c.hello();
  assert.equal((await c.command(plain('wrong-1'))).code, 535);
  assert.equal((await c.command(plain('wrong-2'))).code, 535);
  assert.equal((await c.command(plain('right-Password-1'))).code, 235);
  await c.quit();

  // The lines exactly as pino wrote them (parsing and serialising keeps their order).
  const log = join(s.dir, 'postern.log');
  const lines = s.logs.length;
  await writeFile(log, s.logs.slice(0, lines).map((l) => JSON.stringify(l)).join('\n') + '\n');
  const r = await run('fail2ban-regex', ['--print-all-matched', log, FILTER]);
  assert.equal(r.code, 0, r.output);
  assert.match(r.stdout, /Failregex: 2 total/);
  assert.match(r.stdout, new RegExp(`Lines: ${lines} lines, 0 ignored, 2 matched, ${lines - 2} missed`));
  assert.match(r.stdout, new RegExp(`\\[${lines}\\] "time":"Year`), 'every line\'s time is read by the datepattern');
});

test('fail2ban-regex finds each failed sign-in on the account page with the client address, not the good one', needs('fail2ban-regex', 'curl'), async () => {
  const a = await startAccounts(scratch.path);
  accounts = a.server;
  const jar = join(scratch.path, 'cookies');
  /** One sign-in with curl: the form's CSRF token, then the POST; the HTTP status. */
  const signIn = async (user: string, password: string): Promise<string> => {
    const form = await run('curl', ['-sS', '-k', '-c', jar, '-b', jar, `${a.url}/signin`]);
    const token = /name="_csrf" value="([^"]+)"/.exec(form.stdout)?.[1];
    assert.ok(token, form.output);
    return (await run('curl', ['-sS', '-k', '-c', jar, '-b', jar, '-o', '/dev/null', '-w', '%{http_code}',
      '--data-urlencode', `_csrf=${token}`, '--data-urlencode', `user=${user}`, '--data-urlencode', `password=${password}`, `${a.url}/signin`])).stdout;
  };
  assert.equal(await signIn(USERS.alice, 'wrong-1'), '401');
  assert.equal(await signIn('nobody@example.com', 'wrong-2'), '401');
  assert.equal(await signIn(USERS.alice, PASSWORDS.alice), '303');

  const log = join(scratch.path, 'accounts.log');
  const lines = a.server.logs.length;
  await writeFile(log, a.server.logs.slice(0, lines).map((l) => JSON.stringify(l)).join('\n') + '\n');
  const r = await run('fail2ban-regex', ['--print-all-matched', log, FILTER]);
  assert.equal(r.code, 0, r.output);
  assert.match(r.stdout, new RegExp(`Lines: ${lines} lines, 0 ignored, 2 matched, ${lines - 2} missed`), r.stdout);
  assert.match(r.stdout, /127\.0\.0\.1/);
});
