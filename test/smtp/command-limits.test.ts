// Hostile commands: bytes that are not UTF-8, parameters of extensions not offered, and sessions that never send mail — NOOP/RSET loops,
// recipient probes, RCPT floods past maxRecipients. Each is answered, and each is bounded, as Postfix bounds
// them (smtpd_hard_error_limit, smtpd_junk_command_limit, smtpd_recipient_overshoot_limit).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { readFile } from 'node:fs/promises';
import { SmtpTestClient, type Reply } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';

let server: TestServer;
let ca = '';

before(async () => {
  const pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0, maxRecipients: 5 }
  - name: wide
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
  - name: tls
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    limits: { greetingDelayMs: 0 }
  - name: auth
    listen: 127.0.0.1:0
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(() => server.stop());

async function client(): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  return c;
}

/** Write `lines` in one go (pipelined) and read `count` replies. */
async function pipelined(c: SmtpTestClient, lines: string[], count = lines.length): Promise<Reply[]> {
  c.socket.write(lines.map((l) => `${l}\r\n`).join(''));
  const replies: Reply[] = [];
  for (let i = 0; i < count; i++) replies.push(await c.read());
  return replies;
}

const TOO_MANY_ERRORS = /^421 4\.7\.0 \S+ Error: too many errors$/;

test('a command that is not UTF-8 is refused, never rewritten; UTF-8 addresses are kept byte for byte', async () => {
  const c = await client();
  c.socket.write(Buffer.concat([Buffer.from('MAIL FROM:<'), Buffer.from([0xc3, 0x28]), Buffer.from('@example.org>\r\n')]));
  assert.equal((await c.read()).text, '500 5.5.2 Error: bad UTF-8 syntax');
  assert.equal((await c.command('MAIL FROM:<jörg@example.org> SMTPUTF8')).code, 250);
  c.socket.write(Buffer.concat([Buffer.from('RCPT TO:<'), Buffer.from([0xff, 0xfe]), Buffer.from('@example.com>\r\n')]));
  assert.equal((await c.read()).text, '500 5.5.2 Error: bad UTF-8 syntax');
  assert.equal((await c.command('RSET')).code, 250);
  // Declared (RFC 6531): without SMTPUTF8 a UTF-8 address is refused (smtputf8-declared.test.ts).
  assert.equal((await c.command('MAIL FROM:<jörg@example.org> SMTPUTF8')).code, 250);
  assert.equal((await c.command('RCPT TO:<zoë@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  const r = await c.command('Subject: test\r\n\r\nhello\r\n.');
  assert.equal(r.code, 250, r.text);
  await c.quit();
  const env = await server.runtime.spool.readEnvelope(/queued as (\S+)/.exec(r.text)![1]!);
  assert.deepEqual([env.sender, env.recipients.map((x) => x.address)], ['jörg@example.org', ['zoë@example.com']]);
});

test('a MAIL or RCPT parameter of an extension not offered is refused (REQUIRETLS too), the offered ones are taken', async () => {
  const c = await client();
  assert.equal((await c.command('MAIL FROM:<a@example.org> X-EVIL=1')).text, '555 5.5.4 Unsupported option: X-EVIL');
  assert.equal((await c.command('MAIL FROM:<a@example.org> =x')).text, '555 5.5.4 Unsupported option: =x');
  // Whatever blank smtp-server splits the words at (\s: a tab, a no-break space).
  assert.equal((await c.command('MAIL FROM:<a@example.org>\u00a0=x')).text, '555 5.5.4 Unsupported option: =x');
  assert.equal((await c.command('MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc')).code, 250);
  await c.command('RSET');
  // AUTH= belongs to the AUTH extension, which a listener without SASL mechanisms never offers: refused there, as
  // Postfix refuses it with SASL off (taken, a client that can never log in here named an authenticated sender
  // that scripts saw as the transaction's AUTH parameter). Offered on `auth` (its mechanisms), it is taken.
  assert.equal((await c.command('MAIL FROM:<a@example.org> AUTH=<>')).text, '555 5.5.4 Unsupported option: AUTH');
  assert.equal((await c.command('MAIL FROM:<a@example.org> AUTH=boss@example.com')).text, '555 5.5.4 Unsupported option: AUTH');
  const auth = await SmtpTestClient.connect(server.port('auth'));
  await auth.hello();
  assert.equal((await auth.command('MAIL FROM:<a@example.org> AUTH=<>')).code, 250);
  await auth.quit();
  assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com> FOO=bar')).text, '555 5.5.4 Unsupported option: FOO');
  // A parameter without a name (`=x`, `=`): smtp-server's parser drops it unread, and the command was taken.
  assert.equal((await c.command('RCPT TO:<b@example.com> =NOTIFY')).text, '555 5.5.4 Unsupported option: =NOTIFY');
  assert.equal((await c.command('RCPT TO:<b@example.com> NOTIFY=NEVER =')).text, '555 5.5.4 Unsupported option: =');
  assert.equal((await c.command('RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com')).code, 250);
  await c.quit();
  // Before TLS too: smtp-server's own check answered `530 5.7.0 REQUIRETLS not permitted on non-TLS connections`,
  // telling the client to start TLS, where it then got 555.
  const plain = await client();
  assert.equal((await plain.command('MAIL FROM:<a@example.org> REQUIRETLS')).text, '555 5.5.4 Unsupported option: REQUIRETLS');
  await plain.quit();
  // REQUIRETLS (RFC 8689) is not offered, and delivery would not honour it: refused after STARTTLS too.
  const t = await SmtpTestClient.connect(server.port('tls'));
  await t.hello({ starttls: { ca } });
  assert.equal((await t.command('MAIL FROM:<a@example.org> REQUIRETLS')).text, '555 5.5.4 Unsupported option: REQUIRETLS');
  await t.quit();
});

test('DSN and AUTH parameters over their RFC lengths get 501 5.5.4: what a session keeps of its 100 recipients stays within their bounds', async () => {
  const c = await SmtpTestClient.connect(server.port('wide'));
  await c.hello();
  const tooLong = (name: string, n: number) => `501 5.5.4 Error: ${name} parameter exceeds ${n} characters`;
  assert.equal((await c.command(`MAIL FROM:<a@example.org> ENVID=${'e'.repeat(101)}`)).text, tooLong('ENVID', 100));
  const auth = await SmtpTestClient.connect(server.port('auth')); // AUTH= where AUTH is offered
  await auth.hello();
  assert.equal((await auth.command(`MAIL FROM:<a@example.org> AUTH=${'a'.repeat(490)}@example.org`)).text, tooLong('AUTH', 500));
  assert.equal((await auth.command(`MAIL FROM:<a@example.org> ENVID=${'e'.repeat(100)} AUTH=${'a'.repeat(488)}@example.org`)).code, 250);
  await auth.quit();
  assert.equal((await c.command(`MAIL FROM:<a@example.org> ENVID=${'e'.repeat(100)}`)).code, 250);
  // Within smtp-server's 16 KB command line: each of these held ~16 KB (a NOTIFY list of 2000 entries, spooled too).
  assert.equal((await c.command(`RCPT TO:<u@example.com> ORCPT=rfc822;${'o'.repeat(494)}`)).text, tooLong('ORCPT', 500));
  assert.equal((await c.command(`RCPT TO:<u@example.com> NOTIFY=${'SUCCESS,'.repeat(1990)}DELAY`)).text, tooLong('NOTIFY', 21));
  assert.equal((await c.command('RCPT TO:<u@example.com> NOTIFY=SUCCESS,FAILURE,FAILURE')).text, tooLong('NOTIFY', 21));
  const most = (i: number) => `RCPT TO:<u${i}@example.com> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;${'o'.repeat(493)}`;
  const accepted = await pipelined(c, Array.from({ length: 100 }, (_, i) => most(i)));
  assert.ok(accepted.every((r) => r.code === 250), accepted.find((r) => r.code !== 250)?.text);
  const [conn] = server.servers.get('wide')!.connections;
  const held = JSON.stringify(conn!.session.envelope).length;
  // Each recipient's ORCPT is kept twice (args and dsn): ~1.2 KB a recipient; 16 KB parameters made it ~32 KB.
  assert.ok(held < 100 * 2048, `the envelope holds ${held} bytes`);
  await c.quit();
});

test('an ENVID that is not printable US-ASCII once xtext-decoded gets 501 5.5.4, as Postfix answers it: passed on, a next hop that offers DSN refused it, and the accepted message with it', async () => {
  const c = await client();
  for (const envid of ['caf+E9', 'caf\u00e9', '\u65e5\u672c']) {
    assert.equal((await c.command(`MAIL FROM:<a@example.org> SMTPUTF8 ENVID=${envid}`)).text, '501 5.5.4 Bad ENVID parameter syntax', envid);
  }
  // Printable ASCII, spaces and "+" included, once decoded: taken.
  assert.equal((await c.command('MAIL FROM:<a@example.org> ENVID=a+20b+2Bc+3D')).code, 250);
  await c.quit();
});

test('a parameter that decodes to a control character gets 501 5.5.4 naming it, not a refusal of the address (smtp-server\'s 501 5.1.3 Bad recipient address syntax)', async () => {
  const c = await client();
  for (const parameter of ['ENVID=a+0D+0Ab', 'ENVID=a+00', 'AUTH=a+7F@example.org', 'ENVID=a\u0085b']) {
    const name = parameter.slice(0, parameter.indexOf('='));
    assert.equal((await c.command(`MAIL FROM:<a@example.org> SMTPUTF8 ${parameter}`)).text, `501 5.5.4 Bad ${name} parameter syntax`, parameter);
  }
  assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
  for (const orcpt of ['rfc822;a+0D+0Ab@example.com', 'rfc822;b+1B[2J@example.com', 'rfc822;b+C2+85@example.com']) {
    assert.equal((await c.command(`RCPT TO:<b@example.com> NOTIFY=FAILURE ORCPT=${orcpt}`)).text, '501 5.5.4 Bad ORCPT parameter syntax', orcpt);
  }
  // A malformed address is still the address's refusal; an ORCPT that decodes to printable text is taken.
  assert.equal((await c.command('RCPT TO:<b@@example.com> ORCPT=rfc822;b@example.com')).text, '501 5.1.3 Error: Bad recipient address syntax');
  assert.equal((await c.command('RCPT TO:<b@example.com> ORCPT=rfc822;b+2Bx@example.com')).code, 250);
  await c.quit();
});

test('NOOP, RSET and EHLO loops: 100 are answered, then each counts as a refusal; at 20 the connection is closed with 421', async () => {
  const c = await client(); // its EHLO is the first junk command
  const replies = await pipelined(c, Array.from({ length: 200 }, (_, i) => ['NOOP', 'RSET', 'EHLO again.example'][i % 3]!), 119);
  assert.ok(replies.slice(0, 118).every((r) => r.code === 250), 'the first 118 are answered');
  assert.match(replies[118]!.text, TOO_MANY_ERRORS);
  assert.ok(await c.waitClosed());
});

test('junk commands count whatever the case of their verb (noop, Rset, eHLO)', async () => {
  const c = await client();
  const replies = await pipelined(c, Array.from({ length: 200 }, (_, i) => ['noop', 'Rset', 'eHLO again.example'][i % 3]!), 119);
  assert.ok(replies.slice(0, 118).every((r) => r.code === 250), 'the first 118 are answered');
  assert.match(replies[118]!.text, TOO_MANY_ERRORS);
  assert.ok(await c.waitClosed());
});

test('an accepted message forgives: NOOPs and refusals before it do not count after it', async () => {
  const c = await client();
  await pipelined(c, Array.from({ length: 99 }, () => 'NOOP')); // and the EHLO: 100 junk commands
  const refused = await pipelined(c, ['MAIL FROM:<a@example.org>', ...Array.from({ length: 18 }, (_, i) => `RCPT TO:<u${i}@elsewhere.example>`), 'RSET']);
  assert.equal(refused.filter((r) => r.code === 554).length, 18, 'with the 101st junk command (RSET), 19 refusals: one short of the limit');
  assert.equal((await c.sendMail('a@example.org', ['b@example.com'])).code, 250);
  const after = await pipelined(c, Array.from({ length: 100 }, () => 'NOOP'));
  assert.ok(after.every((r) => r.code === 250));
  assert.equal((await c.command('NOOP')).code, 250, 'still open');
  await c.quit();
});

test('a recipient probe: the 20th refusal is followed by 421 and the close', async () => {
  const c = await client();
  assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
  const replies = await pipelined(c, Array.from({ length: 50 }, (_, i) => `RCPT TO:<guess${i}@elsewhere.example>`), 21);
  assert.ok(replies.slice(0, 20).every((r) => r.code === 554), replies.map((r) => r.code).join(' '));
  assert.match(replies[20]!.text, TOO_MANY_ERRORS);
  assert.ok(await c.waitClosed());
});

test('RCPTs past maxRecipients: up to 1000 get 452 and the message still goes; beyond, each counts as a refusal', async () => {
  const c = await client();
  const overLimitLines = () => server.logs.filter((l) => l.reason === 'limits.maxRecipients').map((l) => l.overLimit);
  const logged = overLimitLines().length;
  const first = await pipelined(c, ['MAIL FROM:<a@example.org>', ...Array.from({ length: 1005 }, (_, i) => `RCPT TO:<u${i}@example.com>`), 'DATA']);
  assert.equal(first.filter((r) => r.code === 250).length, 6, 'MAIL and five recipients');
  assert.equal(first.filter((r) => r.code === 452).length, 1000);
  assert.equal(first.at(-1)!.code, 354);
  // Not a line each: a client made a thousand lines (~1.5 MB, 50 times its commands' bytes) per message.
  assert.deepEqual(overLimitLines().slice(logged), [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
  c.socket.write('Subject: many\r\n\r\nhi\r\n.\r\n');
  assert.equal((await c.read()).code, 250);
  const second = await pipelined(c, ['MAIL FROM:<a@example.org>', ...Array.from({ length: 1100 }, (_, i) => `RCPT TO:<u${i}@example.com>`)], 1027);
  assert.equal(second.filter((r) => r.code === 452).length, 1020);
  assert.match(second.at(-1)!.text, TOO_MANY_ERRORS);
  assert.ok(await c.waitClosed());
  // The accepted message started the count again; past 1000 each is a refusal, with its line (at most maxErrors).
  const beyond = Array.from({ length: 20 }, (_, i) => 1001 + i);
  assert.deepEqual(overLimitLines().slice(logged + 10), [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, ...beyond]);
  const line = server.logs.find((l) => l.overLimit === 512)!;
  // It names the recipient refused (u516: the 512th over the limit of 5), as Postfix does.
  assert.match(String(line.msg), /: 452 4\.5\.3 <u516@example\.com>: Error: too many recipients; from=<a@example\.org> to=<u516@example\.com> proto=ESMTP helo=<\S+> over_limit=512$/);
});

// smtp-server takes a recipient named again as a replacement of the first, never over maxRecipients: RCPT TO of one
// address, repeated, was accepted without end in one transaction (each running the rcptto script, each resetting
// nothing), where every other command a session can repeat is bounded. Accepted RCPT commands are counted now, the
// repeated ones too, as Postfix's smtpd_recipient_limit counts them: past maxRecipients each gets 452, as any.
test('one recipient named again and again: maxRecipients RCPTs accepted, then 452 like any recipient past the limit, then refusals', async () => {
  const c = await client();
  const first = await pipelined(c, ['MAIL FROM:<a@example.org>', ...Array.from({ length: 8 }, (_, i) => `RCPT TO:<${i % 2 ? 'Same' : 'same'}@example.com>`), 'RCPT TO:<other@example.com>', 'DATA']);
  assert.deepEqual(first.map((r) => r.code), [250, 250, 250, 250, 250, 250, 452, 452, 452, 452, 354]);
  assert.equal(first[6]!.text, '452 4.5.3 Error: too many recipients');
  c.socket.write('Subject: one\r\n\r\nhi\r\n.\r\n');
  assert.match((await c.read()).text, /^250 2\.0\.0 Ok: queued as /, 'the message goes, to its one recipient');
  // A new transaction counts afresh; past RECIPIENT_OVERSHOOT (1000) each 452 counts as a refusal, up to maxErrors.
  const second = await pipelined(c, ['MAIL FROM:<a@example.org>', ...Array.from({ length: 1100 }, () => 'RCPT TO:<same@example.com>')], 1027);
  assert.equal(second.filter((r) => r.code === 250).length, 6, 'MAIL and five RCPTs');
  assert.equal(second.filter((r) => r.code === 452).length, 1020);
  assert.match(second.at(-1)!.text, TOO_MANY_ERRORS);
  assert.ok(await c.waitClosed());
});

test('DATA and RSET with an argument get 501 (RFC 5321 allows none) and change nothing; QUIT with one still ends the session', async () => {
  const c = await client();
  assert.equal((await c.command('RSET x')).text, '501 5.5.4 Syntax: RSET');
  assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA x')).text, '501 5.5.4 Syntax: DATA');
  assert.equal((await c.command('RSET now')).text, '501 5.5.4 Syntax: RSET');
  // The transaction survived both: a bare DATA goes on with it.
  assert.equal((await c.command('DATA ')).code, 354);
  assert.match((await c.command('Subject: t\r\n\r\nbody\r\n.')).text, /^250 2\.0\.0 Ok: queued as /);
  // A DATA with an argument is refused: a message pipelined behind it is not read as commands.
  c.socket.write('MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA x\r\nMAIL FROM:<forged@example.org>\r\n.\r\n');
  assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.text), ['250 2.1.0 Accepted', '250 2.1.5 Accepted',
    '554 5.5.0 Error: SMTP protocol synchronization (message content sent before the reply to DATA)']);
  const q = await client();
  q.socket.write('QUIT now\r\n');
  assert.deepEqual((await q.repliesUntilClosed()).map((r) => r.code), [221]);
});
