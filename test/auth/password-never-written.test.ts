// The client's AUTH password reaches the auth script (ctx.auth.password), and from there nothing Postern writes:
// the message of an error the script throws (V8 quotes the value: `"…" is not valid JSON`) in the server log,
// a shadow script's failure line, and `postern try`'s printed context (text and --json). Real server, real
// client (swaks), the real CLI.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { needs, run } from '../helpers/example.ts';
import { runCli } from '../helpers/cli.ts';
import { until } from '../helpers/wait.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { submissionConfig } from './helpers/submission.ts';

/** Parses the password as JSON, as a script reading a token might: every password here makes it throw. */
const PARSING_SCRIPT = 'export default function auth(ctx) { JSON.parse(ctx.auth.password); return accept(); }\n';
const SECRET = 'alice-Secret-1';

let pki: TestPki;
let server: TestServer;

before(async () => {
  pki = await makeTestPki();
  server = await startTestServer({
    config: submissionConfig(pki, '{ authFailuresPerIp: 1000, authFailuresBeforeDelay: 100, greetingDelayMs: 0 }').replace('    auth:', '    shadowScripts: ./shadow\n    auth:'),
    files: { users: `alice@example.com:${await hashPassword(SECRET)}\n`, 'shadow/auth.ts': PARSING_SCRIPT },
    scripts: { 'auth.ts': PARSING_SCRIPT },
  });
});
after(() => server?.stop());

test('an auth script that throws on the password: 454 to the client, the error logged with the password masked (live and shadow)', needs('swaks'), async () => {
  const passwords = ['Wrong-Guess-77', SECRET];
  for (const [i, password] of passwords.entries()) {
    const swaks = await run('swaks', ['--server', '127.0.0.1', '--port', String(server.port('sub')), '--tls', '--tls-ca-path', pki.ca.cert,
      '--auth', i ? 'LOGIN' : 'PLAIN', '--auth-user', 'alice@example.com', '--auth-password', password, '--quit-after', 'AUTH']);
    assert.match(swaks.output, /<~\* 454 4\.7\.0 /, swaks.output);
  }
  await until('both live failures and both shadow failures logged', () =>
    server.logs.filter((l) => /^(policy|shadow) script auth failed/.test(String(l.msg))).length === 4);
  const failures = server.logs.filter((l) => /^(policy|shadow) script auth failed/.test(String(l.msg)));
  for (const l of failures) assert.match(String(l.err), /"\*{8}" is not valid JSON/, JSON.stringify(l));
  const written = JSON.stringify(server.logs);
  for (const password of passwords) assert.ok(!written.includes(password), `${password} in the log`);
});

test('postern try: the auth context and a script error show the password masked, with --password-file too (text and --json)', async () => {
  const file = join(server.dir, 'alice.pw');
  await writeFile(file, `${SECRET}\n`, { mode: 0o600 });
  const args = ['try', 'auth', '-c', join(server.dir, 'postern.yaml'), '--user', 'alice@example.com', '--password-file', file];
  const text = await runCli(args);
  assert.equal(text.code, 3, text.stderr);
  assert.match(text.stdout, /^ {6}"password": "\*{8}",$/m);
  assert.match(text.stdout, /SyntaxError: .*"\*{8}" is not valid JSON — fails closed/);
  const json = await runCli([...args, '--json']);
  const auth = (JSON.parse(json.stdout) as { steps: Array<{ calls: Array<{ hook: string; context: { auth: { password: string } }; failure: { message: string } | null }> }> })
    .steps.flatMap((s) => s.calls).find((c) => c.hook === 'auth')!;
  assert.equal(auth.context.auth.password, '********');
  assert.match(auth.failure!.message, /"\*{8}" is not valid JSON/);
  for (const r of [text, json]) assert.ok(!`${r.stdout}${r.stderr}`.includes(SECRET), `the password in:\n${r.stdout}${r.stderr}`);
  assert.equal((await readFile(file, 'utf8')).trim(), SECRET);
});
