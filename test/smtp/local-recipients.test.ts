// Backscatter: with `localDomains` alone every local part was accepted at RCPT TO, so a dictionary attack with
// forged senders was spooled, refused by the mailbox server behind, and bounced to the innocent forged senders.
// `localRecipients` (Postfix's local_recipient_maps) lists the addresses that exist: any other address of a local
// domain gets `550 5.1.1 … User unknown in local recipient table` at RCPT TO, from any client (logged in too), with a
// decision line; an rcptto script sees `unknown-recipient` and may accept. Real clients (swaks, Python's smtplib),
// a real server, real reloads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { checkCommand } from '../../engine/cli/check.ts';
import { PolicyClient, rcptRequest } from '../policy-service/helpers/policy-client.ts';

const run = promisify(execFile);
const swaksFound = spawnSync('sh', ['-c', 'command -v swaks']).status === 0;
const needsSwaks = { skip: swaksFound || process.env.POSTERN_REQUIRE_CLIENTS ? false : 'swaks not installed' };
const pythonFound = spawnSync('python3', ['-c', 'import smtplib']).status === 0;
const needsPython = { skip: pythonFound || process.env.POSTERN_REQUIRE_CLIENTS ? false : 'python3 not installed' };

const RECIPIENTS = `# mailboxes of the mailbox server behind
alice@example.com
Bob@Example.COM      OK
jörg@bücher.example
@catchall.example
carol@plus.example
`;
const PASSWORD = 'alice-Secret-1';

let server: TestServer;

before(async () => {
  server = await startTestServer({
    files: { recipients: RECIPIENTS, users: `alice@example.com:${await hashPassword(PASSWORD)}\n`, 'scripted/rcptto.ts': SCRIPT, 'no-scripts/README': 'no scripts\n' },
    config: `
localDomains: [example.com, bücher.example, catchall.example, plus.example]
localRecipients: ./recipients
recipientDelimiter: "+-"
users: ./users
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: none }
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresBeforeDelay: 100 }
  - name: scripted
    listen: 127.0.0.1:0
    reverseDns: false
    scripts: ./scripted
    limits: { greetingDelayMs: 0 }
policyServices:
  - { name: postfix, listen: 127.0.0.1:0, relayRule: true, scripts: ./no-scripts }
`,
  });
});
after(() => server.stop());

/** The rcptto script of the `scripted` listener: accepts one unknown address, and says what the rule decided. */
const SCRIPT = `export default (ctx: RcptToContext) => {
  if (ctx.builtin.reason === 'unknown-recipient' && ctx.address.localPart === 'legacy') return accept({ text: 'known elsewhere' });
  if (ctx.address.localPart === 'tell') return reject(\`builtin \${ctx.builtin.accepted} \${ctx.builtin.reason}\`);
};
`;

/** swaks up to RCPT TO for `to`: its exit status (0 accepted, 24 RCPT refused) and the transcript. */
async function swaksRcpt(to: string, extra: string[] = []): Promise<{ code: number; out: string }> {
  const args = ['--server', '127.0.0.1', '--port', String(server.port('mx')), '--ehlo', 'client.example',
    '--from', 'forged-victim@innocent.example', '--to', to, '--quit-after', 'RCPT', ...extra];
  return run('swaks', args).then((r) => ({ code: 0, out: r.stdout }), (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }));
}

async function rcpt(listener: string, to: string): Promise<string> {
  const c = await SmtpTestClient.connect(server.port(listener));
  await c.hello();
  await c.command('MAIL FROM:<sender@elsewhere.example> SMTPUTF8');
  const r = await c.command(`RCPT TO:<${to}>`);
  await c.quit();
  return `${r.code} ${r.text.replace(/^\d{3} /, '')}`;
}

test('swaks: an address of a local domain that the table does not list gets 550 5.1.1 at RCPT TO, with a decision line', needsSwaks, async () => {
  const mark = server.logs.length;
  const r = await swaksRcpt('nobody@example.com');
  assert.equal(r.code, 24, `swaks exit 24 (RCPT refused):\n${r.out}`);
  assert.match(r.out, /<~?\*+ +550 5\.1\.1 <nobody@example\.com>: Recipient address rejected: User unknown in local recipient table/);
  const line = server.logs.slice(mark).find((l) => l.decision === 'reject' && l.stage === 'RCPT');
  assert.ok(line, 'a decision line');
  assert.equal(line.to, 'nobody@example.com');
  assert.match(String(line.reason), /^localRecipients: /);
  assert.match(String(line.msg), /^\w+: reject: RCPT from .*: 550 5\.1\.1 <nobody@example\.com>: Recipient address rejected: User unknown in local recipient table; from=<forged-victim@innocent\.example> to=<nobody@example\.com>/);
});

test('swaks: listed addresses are accepted, compared case-insensitively and by A-labels; catch-all, postmaster and subaddresses', needsSwaks, async () => {
  for (const to of ['alice@example.com', 'ALICE@EXAMPLE.COM', 'bob@example.com', 'anyone@catchall.example', 'postmaster@example.com',
    'PostMaster@plus.example', 'carol+lists@plus.example', 'carol-x+y@plus.example', 'carol@plus.example']) {
    const r = await swaksRcpt(to);
    assert.equal(r.code, 0, `${to} accepted:\n${r.out}`);
  }
  // swaks declares no SMTPUTF8: a raw client for the U-label spellings.
  for (const to of ['jörg@xn--bcher-kva.example', 'Jörg@Bücher.example', 'JÖRG@bücher.example']) assert.match(await rcpt('mx', to), /^250 /, `${to} accepted`);
  for (const to of ['nobody@plus.example', '+carol@plus.example', 'carolx@plus.example', 'joerg@bücher.example']) {
    assert.match(await rcpt('mx', to), /^550 5\.1\.1 /, `${to} refused`);
  }
});

test('a logged-in client is refused too: its mail to a mailbox that does not exist would bounce all the same', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  assert.equal((await c.command(`AUTH PLAIN ${Buffer.from(`\0alice@example.com\0${PASSWORD}`).toString('base64')}`)).code, 235);
  assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
  assert.match((await c.command('RCPT TO:<typo@example.com>')).text, /^550 5\.1\.1 <typo@example\.com>: Recipient address rejected/);
  assert.equal((await c.command('RCPT TO:<someone@remote.example>')).code, 250, 'relaying for it is unchanged');
  await c.quit();
});

test('an rcptto script sees unknown-recipient and may accept; its other verdicts see the rule as before', async () => {
  assert.match(await rcpt('scripted', 'legacy@example.com'), /^250 (2\.1\.5 )?known elsewhere/);
  assert.match(await rcpt('scripted', 'nobody@example.com'), /^550 5\.1\.1 <nobody@example\.com>: Recipient address rejected/, 'no verdict: the rule\'s refusal');
  assert.match(await rcpt('scripted', 'tell@example.com'), /^550 (5\.7\.1 )?builtin false unknown-recipient/);
  assert.match(await rcpt('scripted', 'tell@catchall.example'), /^550 (5\.7\.1 )?builtin true local-domain/);
});

test('a policy service with relayRule answers an unknown local recipient as the listener does', async () => {
  const c = await PolicyClient.connect({ port: Number(server.policyAddresses.get('postfix')!.split(':').pop()) });
  assert.equal(await c.ask(rcptRequest({ recipient: 'nobody@example.com' })), 'action=550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in local recipient table');
  assert.match(await c.ask(rcptRequest({ recipient: 'alice@example.com' })), /^action=(DUNNO|OK)$/);
  c.socket.destroy();
});

test('smtplib: a dictionary attack with a forged sender spools nothing for the unknown addresses (nothing to bounce)', needsPython, async () => {
  const mark = server.logs.length;
  const py = `
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', ${server.port('mx')})
s.ehlo('spammer.example')
refused = None
try:
    refused = s.sendmail('forged-victim@innocent.example', ['a1@example.com', 'alice@example.com', 'webmaster@example.com', 'info@example.com'], 'Subject: hi\\r\\n\\r\\nbuy\\r\\n')
except smtplib.SMTPRecipientsRefused as e:
    refused = e.recipients
for addr, (code, text) in sorted(refused.items()):
    print(addr, code, text.decode())
s.quit()
`;
  const out = (await run('python3', ['-c', py])).stdout;
  assert.deepEqual(out.trim().split('\n').map((l) => l.split(' ').slice(0, 3).join(' ')), [
    'a1@example.com 550 5.1.1', 'info@example.com 550 5.1.1', 'webmaster@example.com 550 5.1.1',
  ]);
  const accepted = server.logs.slice(mark).filter((l) => String(l.msg).includes('accepted from='));
  assert.equal(accepted.length, 1);
  assert.deepEqual(accepted[0]!.to, ['alice@example.com'], 'only the existing mailbox is in the spooled envelope');
});

test('reload: a table renamed over is taken; an emptied or broken one is refused with its file and line, and the running table answers', async () => {
  const table = join(server.dir, 'recipients');
  await writeFile(`${table}.new`, `${RECIPIENTS}newhire@example.com\n`);
  await rename(`${table}.new`, table);
  await server.reloader.whenIdle();
  assert.match(await rcpt('mx', 'newhire@example.com'), /^250 /);

  // Cut short in place (a generator caught halfway): the settling rule of every input holds it back.
  const waits = (): number => server.logs.filter((l) => String(l.msg).startsWith('waiting for ') && String(l.msg).includes(table)).length;
  const outcomes: boolean[] = [];
  server.reloader.onReload((o) => outcomes.push(o.ok && o.changed));
  await writeFile(table, 'alice@example.com\n');
  await new Promise<void>((resolve) => { const t = setInterval(() => { if (waits() === 1 || outcomes.length) { clearInterval(t); resolve(); } }, 10); });
  assert.deepEqual(outcomes, [], 'the shortened table was not taken at the usual quiet period');
  assert.equal(waits(), 1, 'it is waited for');
  await writeFile(table, `${RECIPIENTS}newhire@example.com\n`); // whole again: the same content as in force
  await server.reloader.whenIdle();
  assert.match(await rcpt('mx', 'newhire@example.com'), /^250 /);

  await writeFile(table, ''); // `make-list > recipients`, caught before its output; SIGHUP does not wait for it
  const emptied = await server.reloader.reload('SIGHUP');
  assert.equal(emptied.ok, false);
  assert.match(String(server.reloader.status.data.lastError), new RegExp(`${table}: localRecipients: lists no recipient`));
  assert.match(await rcpt('mx', 'newhire@example.com'), /^250 /, 'the running table still answers');

  await writeFile(table, 'alice@example.com\nceo\u00ad@example.com\n');
  assert.equal((await server.reloader.reload('SIGHUP')).ok, false);
  assert.match(String(server.reloader.status.data.lastError), new RegExp(`${table}:2: localRecipients: control, format or quote characters`), 'a soft hyphen: an address no client sends');

  await writeFile(table, 'alice@example.com\n# fine so far\nnot-an-address\n');
  const broken = await server.reloader.reload('SIGHUP');
  assert.equal(broken.ok, false);
  assert.match(String(server.reloader.status.data.lastError), new RegExp(`${table}:3: localRecipients: expected "user@domain" or "@domain", got "not-an-address"`));
  assert.match(await rcpt('mx', 'newhire@example.com'), /^250 /);
  assert.match(await rcpt('mx', 'nobody@example.com'), /^550 5\.1\.1 /);
  await writeFile(`${table}.new`, RECIPIENTS); // put right for what follows
  await rename(`${table}.new`, table);
  await server.reloader.whenIdle();
  assert.equal(server.reloader.status.data.lastError, null);
});

// The case's first check is the command line; its further ones call checkCommand in this process (a process each,
// ~0.3 s of CPU mostly module loading, proved nothing more).
const checkHere = (config: string) => runInProcess(() => checkCommand({ config }));

test('postern check: warns when the local domains accept any recipient; names the line of a bad entry; warns of a domain without entries', async () => {
  const dir = server.dir;
  const base = `dataDir: ./data-check\nscripts: ./scripts\nlisteners:\n  - name: mx\n    listen: 127.0.0.1:0\n`;
  const delivering = 'delivery:\n  route: { smarthost: { host: 127.0.0.1, port: 25 } }\n';
  await writeFile(join(dir, 'open.yaml'), `localDomains: [example.com]\n${base}${delivering}`);
  const open = await runCli(['check', '-c', join(dir, 'open.yaml')]);
  assert.equal(open.code, 0, open.stderr);
  assert.match(open.stdout + open.stderr, /open\.yaml:1:\d+: localDomains: the local domains accept any recipient .*localRecipients/);
  // Nothing bounces with delivery off (mail stays in the spool), and a listener that requires AUTH knows its clients.
  await writeFile(join(dir, 'spooling.yaml'), `localDomains: [example.com]\n${base}`);
  assert.doesNotMatch((await checkHere(join(dir, 'spooling.yaml'))).stderr, /accept any recipient/);
  await writeFile(join(dir, 'submission.yaml'), `localDomains: [example.com]\n${base}    auth: { mechanisms: [PLAIN], required: true }\n${delivering}`);
  assert.doesNotMatch((await checkHere(join(dir, 'submission.yaml'))).stderr, /accept any recipient/);

  await mkdir(join(dir, 'checking-scripts'), { recursive: true });
  await writeFile(join(dir, 'checking-scripts', 'rcptto.ts'), SCRIPT);
  await writeFile(join(dir, 'scripted.yaml'), `localDomains: [example.com]\n${base.replace('./scripts', './checking-scripts')}${delivering}`);
  const scripted = await checkHere(join(dir, 'scripted.yaml'));
  assert.equal(scripted.code, 0, scripted.stderr);
  assert.doesNotMatch(scripted.stdout + scripted.stderr, /accept any recipient/, 'an rcptto script may check them');

  await writeFile(join(dir, 'bad-recipients'), 'alice@example.com\nbob@example..com\n');
  await writeFile(join(dir, 'bad.yaml'), `localDomains: [example.com]\nlocalRecipients: ./bad-recipients\n${base}`);
  const bad = await checkHere(join(dir, 'bad.yaml'));
  assert.equal(bad.code, 1);
  assert.match(bad.stdout + bad.stderr, /bad-recipients:2: localRecipients: expected a domain name or an address literal after "@", got "bob@example\.\.com"/);

  await writeFile(join(dir, 'gap-recipients'), 'alice@example.com\nbob@exmaple.com\n');
  await writeFile(join(dir, 'gap.yaml'), `localDomains: [example.com, other.example]\nlocalRecipients: ./gap-recipients\n${base}`);
  const gap = await checkHere(join(dir, 'gap.yaml'));
  assert.equal(gap.code, 0, gap.stderr);
  assert.match(gap.stdout + gap.stderr, /lists addresses of exmaple\.com, which is not in localDomains/);
  assert.match(gap.stdout + gap.stderr, /lists no address of the local domain other\.example: every recipient there is refused/);
  assert.doesNotMatch(gap.stdout + gap.stderr, /accept any recipient/);
});

test('unknownRecipientReply: defer answers 450 4.1.1 (a new table checked without losing mail); back to reject at the next reload', async () => {
  const config = join(server.dir, 'postern.yaml');
  const text = await readFile(config, 'utf8');
  await writeFile(config, text.replace('localRecipients: ./recipients', 'localRecipients: ./recipients\nunknownRecipientReply: defer'));
  assert.ok((await server.reloader.reload('SIGHUP')).ok);
  assert.match(await rcpt('mx', 'nobody@example.com'), /^450 4\.1\.1 <nobody@example\.com>: Recipient address rejected: User unknown in local recipient table/);
  assert.match(await rcpt('mx', 'alice@example.com'), /^250 /);
  const c = await PolicyClient.connect({ port: Number(server.policyAddresses.get('postfix')!.split(':').pop()) });
  assert.equal(await c.ask(rcptRequest({ recipient: 'nobody@example.com' })), 'action=450 4.1.1 <nobody@example.com>: Recipient address rejected: User unknown in local recipient table');
  c.socket.destroy();
  await writeFile(config, text);
  assert.ok((await server.reloader.reload('SIGHUP')).ok);
  assert.match(await rcpt('mx', 'nobody@example.com'), /^550 5\.1\.1 /);
});

test('postern try rcptto shows the rule\'s decision and the reply the server gives', async () => {
  const r = await runCli(['try', 'rcptto', '-c', join(server.dir, 'postern.yaml'), '--to', 'nobody@example.com']);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stdout, /^< 550 5\.1\.1 <nobody@example\.com>: Recipient address rejected: User unknown in local recipient table$/m);
  assert.equal((await runCli(['try', 'rcptto', '-c', join(server.dir, 'postern.yaml'), '--to', 'Bob@example.com'])).code, 0);
});
