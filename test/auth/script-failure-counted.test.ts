// An auth script that fails (throws, times out) gets 454 4.7.0, which was never counted as a failed AUTH: a
// script that fails only for a wrong password (here the default scripts' pattern of logging the built-in rule's
// account, null when it refused) answered 454 to every wrong guess and 235 to the right one, without limit.
// A failure is now counted unless the built-in rule found the credentials right; a deliberate defer() is not.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { TOO_MANY, plain, startSubmission, type Submission } from './helpers/submission.ts';

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
