// `postern try --session` gives each MAIL FROM and RCPT TO the reply the listener gives: the same commands through a
// real server (a raw client on its port) and through try, line for line. smtp-server answers many of them before
// Postern's policy sees them (an address that does not parse, a duplicate or bad parameter, SIZE over the limit, a
// nested MAIL, RCPT before MAIL, too many recipients); try, which asked the policy alone, said `250` to each. So do a
// HELO and an EHLO without a name (try refused the session file), with two, or with a name smtp-server refuses; and an
// EHLO in a transaction, which ends it as RSET does (try kept the sender: the RCPT after it got 250, not 503).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

let server: TestServer;
before(async () => {
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxRecipients: 2, maxMessageSize: 1000000, maxErrors: 40 }
`,
  });
});
after(() => server?.stop());

const HELOS = ['EHLO', 'HELO', 'EHLO a.example b.example', `HELO ${'a'.repeat(301)}`, 'EHLO a\u0001b.example',
  'EHLO a.example', 'MAIL FROM:<a@example.net>', 'EHLO b.example', 'RCPT TO:<b@example.com>'];

const COMMANDS = [
  'MAIL FROM:<foo>',
  'MAIL FROM:<a@example.net> SIZE=1 SIZE=2',
  'MAIL FROM:<a@example.net> SIZE=12x',
  'MAIL FROM:<a@example.net> SIZE=1000001',
  'MAIL FROM:<a@example.net> BODY=BOGUS',
  'MAIL FROM:<a@example.net> SMTPUTF8=yes',
  'MAIL FROM:<a@example.net> REQUIRETLS',
  'MAIL FROM:<a@example.net> FOO=bar',
  'MAIL FROM:<a@example.net> =x',
  'MAIL FROM:<a@example.net> RET',
  'MAIL FROM:<a@example.net> ENVID=a+0D+0Ab',
  'RCPT TO:<b@example.com>',
  'MAIL FROM:<a@example.net> SIZE=999999 RET=FULL ENVID=x BODY=8BITMIME',
  'MAIL FROM:<a@example.net>',
  'RCPT TO:<b@example.com> NOTIFY=BOGUS',
  'RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS',
  'RCPT TO:<b@example.com> ORCPT=x',
  'RCPT TO:<b@example.com> NOTIFY=NEVER =',
  'RCPT TO:<b@example.com> ORCPT=rfc822;b+0D+0A@example.com',
  'RCPT TO:<b@@example.com>',
  'RCPT TO:<b@elsewhere.example>',
  'RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE',
  'RCPT TO:<c@example.com>',
  'RCPT TO:<d@example.com>',
  'RCPT TO:<B@example.com>',
];

test('each MAIL FROM and RCPT TO of a session file gets from try the reply line the listener gives', async () => {
  // On a connection of their own: the commands below count up to the listener's maxErrors.
  const heloClient = await SmtpTestClient.connect(server.port('mx'));
  assert.equal((await heloClient.read()).code, 220);
  const liveHelos: string[] = [];
  // An EHLO's first line (try shows no extensions).
  for (const command of HELOS) liveHelos.push((await heloClient.command(command)).text.split('\n')[0]!.replace(/^250-/, '250 '));
  await heloClient.quit();
  const client = await SmtpTestClient.connect(server.port('mx'));
  assert.equal((await client.read()).code, 220);
  assert.equal((await client.command('EHLO client.example')).code, 250);
  const live: string[] = [];
  for (const command of COMMANDS) live.push((await client.command(command)).text);
  await client.quit();

  const session = join(server.dir, 'session.txt');
  await writeFile(session, [...HELOS, 'EHLO client.example', ...COMMANDS].join('\n') + '\n');
  const r = await runCli(['try', '--session', session, '-c', join(server.dir, 'postern.yaml'), '--ip', '127.0.0.1', '--json']);
  const steps = (JSON.parse(r.stdout) as { steps: Array<{ step: string; command: string; reply: string }> }).steps;
  const played = steps.filter((s) => s.step !== 'connect');
  const helos = played.slice(0, HELOS.length);
  assert.deepEqual(helos.map((s) => s.command), HELOS, 'each HELO shown as written, the session going on past the refused ones');
  assert.deepEqual(helos.map((s) => s.reply), liveHelos);
  assert.deepEqual(liveHelos.map((l) => l.slice(0, 9)), ['501 5.5.4', '501 5.5.4', '501 5.5.4', '501 5.5.2', '501 5.5.2', '250 local', '250 2.1.0', '250 local', '503 5.5.1']);
  const tried = played.slice(HELOS.length + 1);
  assert.deepEqual(tried.map((s) => s.command), COMMANDS, 'each command shown as written');
  assert.deepEqual(tried.map((s) => s.reply), live);
  // What the cases are about: smtp-server's refusals, not 250s; the last, a recipient named again past maxRecipients,
  // counts again (as the listener counts RCPT commands).
  assert.deepEqual(live.map((l) => l.slice(0, 3)), ['501', '501', '501', '552', '501', '501', '555', '555', '555', '501', '501', '503', '250', '503', '501', '501', '501', '555', '501', '501', '554', '250', '250', '452', '452']);
  assert.equal(r.code, 1, 'refused steps: exit 1');
});
