// The fail2ban filter shipped in examples/fail2ban matches the server's own auth-failure lines, and only
// them: fail2ban-regex (the real tool) over a log a real server wrote while a client failed AUTH twice and
// then logged in, read from a file (StandardOutput=append:) and from the journal, as the jail of
// docs/operations.md reads it (backend = systemd: each line comes as "HOST IDENTIFIER[PID]: {…}").
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
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

// systemd-journal-remote writes a real journal file from journal export format; fail2ban's systemd backend
// reads it through python3-systemd (Debian's /usr/bin/python3, fail2ban's; both installed by test/setup-system.sh).
const JOURNAL_REMOTE = '/lib/systemd/systemd-journal-remote';
const journalMissing = !existsSync(JOURNAL_REMOTE) ? 'systemd-journal-remote' :
  spawnSync('/usr/bin/python3', ['-c', 'import systemd.journal']).status !== 0 ? 'python3-systemd' : '';
if (journalMissing && process.env.POSTERN_REQUIRE_CLIENTS) throw new Error(`${journalMissing} not installed`);

/**
 * fail2ban-regex over `lines` read from a file, and, where the tools are here, from a journal file holding
 * them as systemd stores a service's stdout (the unit's SyslogIdentifier, its pid): both outputs.
 */
async function fail2banRegex(lines: string[], name: string): Promise<Array<{ source: string; stdout: string }>> {
  const log = await scratch.file(`${name}.log`, lines.join('\n') + '\n');
  const results = [];
  const file = await run('fail2ban-regex', ['--print-all-matched', log, FILTER]);
  assert.equal(file.code, 0, file.output);
  results.push({ source: 'file', stdout: file.stdout });
  if (!journalMissing) {
    const start = Date.now() * 1000;
    const entries = lines.map((line, i) => [
      `__REALTIME_TIMESTAMP=${start + i}`, `__MONOTONIC_TIMESTAMP=${1_000_000 + i}`, '_BOOT_ID=0123456789abcdef0123456789abcdef',
      '_TRANSPORT=stdout', '_HOSTNAME=mx1', 'SYSLOG_IDENTIFIER=postern', '_PID=4242', '_SYSTEMD_UNIT=postern.service', `MESSAGE=${line}`,
    ].join('\n'));
    const journal = join(scratch.path, `${name}.journal`);
    const made = spawnSync(JOURNAL_REMOTE, ['-o', journal, '-'], { input: entries.join('\n\n') + '\n\n', encoding: 'utf8' });
    assert.equal(made.status, 0, made.stderr);
    const read = await run('fail2ban-regex', ['--print-all-matched', `systemd-journal[journalfiles=${journal}]`, FILTER]);
    assert.equal(read.code, 0, read.output);
    results.push({ source: 'journal', stdout: read.stdout });
  }
  return results;
}

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
  const lines = s.logs.length;
  const [file, ...journal] = await fail2banRegex(s.logs.slice(0, lines).map((l) => JSON.stringify(l)), 'auth');
  assert.match(file!.stdout, new RegExp(`\\[${lines}\\] "time":"Year`), 'every line\'s time is read by the datepattern');
  for (const r of [file!, ...journal]) {
    assert.match(r.stdout, /Failregex: 2 total/, r.source);
    assert.match(r.stdout, new RegExp(`Lines: ${lines} lines, 0 ignored, 2 matched, ${lines - 2} missed`), `${r.source}: ${r.stdout}`);
    assert.match(r.stdout, /127\.0\.0\.1/, r.source);
  }
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

  const lines = a.server.logs.length;
  for (const r of await fail2banRegex(a.server.logs.slice(0, lines).map((l) => JSON.stringify(l)), 'accounts')) {
    assert.match(r.stdout, new RegExp(`Lines: ${lines} lines, 0 ignored, 2 matched, ${lines - 2} missed`), `${r.source}: ${r.stdout}`);
    assert.match(r.stdout, /127\.0\.0\.1/, r.source);
  }
});

test("docs/operations.md's jail, with the shipped filter, passes fail2ban-client's configuration test", needs('fail2ban-client'), async () => {
  const doc = await readFile(new URL('../../docs/operations.md', import.meta.url), 'utf8');
  const jail = /```ini\n(# \/etc\/fail2ban\/jail\.d\/postern\.conf\n[^]*?)\n```/.exec(doc)?.[1];
  assert.ok(jail, 'the jail block of docs/operations.md');
  // The system's fail2ban configuration (jail.conf, actions), with this jail alone in jail.d.
  const conf = join(scratch.path, 'fail2ban');
  await cp('/etc/fail2ban', conf, { recursive: true });
  await rm(join(conf, 'jail.d'), { recursive: true, force: true });
  await mkdir(join(conf, 'jail.d'));
  await writeFile(join(conf, 'jail.d', 'postern.conf'), `${jail}\n`);
  await cp(FILTER, join(conf, 'filter.d', 'postern.conf'));
  const t = await run('fail2ban-client', ['-c', conf, '-t']);
  assert.equal(t.code, 0, t.output);
  const d = await run('fail2ban-client', ['-c', conf, '-d']);
  assert.match(d.stdout, /\['add', 'postern', 'systemd'\]/, d.output);
  assert.match(d.stdout, /\['set', 'postern', 'addjournalmatch', '_SYSTEMD_UNIT=postern\.service'\]/);
  assert.match(d.stdout, /'addfailregex'.*authentication failed/);
});
