// The SMTP conversation: command limits, unrecognised commands, pipelining, batched replies, a client that resets,
// half-closes or leaves at any stage, message limits, reply texts, timeouts while the event loop is held and the test
// client's own refusals. One file for what were several (one test process and one load of the engine instead of one
// each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir, stat } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { startTestServer, type TestServer, PLAIN_MX_CONFIG } from '../helpers/postern.ts';
import { SmtpTestClient, type Reply, type TlsClientOptions, submitMessage } from '../helpers/smtp-client.ts';
import { makeTestPki, clientTlsOptions, type TestPki } from '../helpers/pki.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { batchReply, flushAfterScriptCalls } from '../../engine/smtp/reply-batch.ts';
import { until, closed } from '../helpers/wait.ts';
import type { LocalConnectionCounter } from '../../engine/smtp/postern-server.ts';
import { headerBytesScanned } from '../../engine/smtp/header-reader.ts';
import type { SpoolWriter } from '../../engine/spool/spool.ts';

describe('command-limits', () => {
  // Hostile commands: bytes that are not UTF-8, parameters of extensions not offered, and sessions that never send mail — NOOP/RSET loops,
  // recipient probes, RCPT floods past maxRecipients. Each is answered, and each is bounded, as Postfix bounds
  // them (smtpd_hard_error_limit, smtpd_junk_command_limit, smtpd_recipient_overshoot_limit).
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
});

describe('unrecognised-commands', () => {
  // Unrecognised commands are refusals like any other: limits.maxErrors bounds them, an accepted message starts the
  // count again, and the client that reaches it gets the documented `421 4.7.0 <hostname> Error: too many errors`
  // with a decision line naming limits.maxErrors. smtp-server's own count of them (fixed at 10, over the whole
  // connection) closed the connection first with `421 4.4.2 Error: too many unrecognized commands`, whatever
  // maxErrors said (20 by default). Real server, real sockets.
  let s: TestServer;
  before(async () => {
    s = await startTestServer({
      config: configYaml({ hostname: 'mx.test', localDomains: ['example.test'], listeners: [testListener('mx', { tls: { mode: 'none' }, limits: { maxErrors: 15 } })] }),
    });
  });
  after(() => s?.stop());

  const decisions = (from: number): Array<Record<string, unknown>> => s.logs.slice(from).filter((l) => l.decision !== undefined);

  test('14 unrecognised commands under maxErrors 15 are each refused and the session goes on; the 15th closes it with 421 4.7.0', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.read();
    await c.command('EHLO client.example');
    for (let i = 1; i < 15; i++) assert.equal((await c.command(`FOO${i}`)).code, 500, `command ${i}`);
    assert.equal((await c.command('NOOP')).code, 250, 'still open');
    assert.equal((await c.command('FOO15')).code, 500); // the 15th refusal, then the 421 it reached
    assert.equal((await c.read()).text, '421 4.7.0 mx.test Error: too many errors');
    assert.ok(await c.waitClosed());
    const lines = decisions(mark);
    assert.equal(lines.length, 16, 'one line per refusal (15 × 500, the 421)');
    assert.equal(lines.at(-1)!.reason, 'limits.maxErrors');
  });

  test('an accepted message starts the count again: 9 unrecognised commands, a message, 9 more, and the session is still open', { timeout: 60_000 }, async () => {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.read();
    await c.command('EHLO client.example');
    for (let i = 0; i < 9; i++) assert.equal((await c.command('FOO')).code, 500);
    for (const line of ['MAIL FROM:<a@sender.example>', 'RCPT TO:<u@example.test>']) assert.equal((await c.command(line)).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    c.socket.write('Subject: between\r\n\r\nbody\r\n.\r\n');
    assert.equal((await c.read()).code, 250);
    for (let i = 0; i < 9; i++) assert.equal((await c.command('FOO')).code, 500, `command ${i + 1} after the message`);
    assert.equal((await c.command('NOOP')).code, 250, 'still open');
    await c.quit();
  });

  // sendmail's WIZ, SHELL and KILL: smtp-server answered them itself with jokes (`500 Can not kill Mom`, `This incident
  // will be reported`), and `WIZ <anything>` with `200 Please pass, oh mighty wizard`: no refusal, no decision line, and
  // counted by neither maxErrors nor maxJunkCommands, so a client could hold its connection with it for ever.
  test('WIZ, SHELL and KILL are unknown commands: 500 5.5.2, a decision line each, counted to maxErrors', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.read();
    await c.command('EHLO client.example');
    const commands = [...Array.from({ length: 13 }, () => 'WIZ secret'), 'SHELL', 'KILL'];
    for (const command of commands) assert.equal((await c.command(command)).text, '500 5.5.2 Error: command not recognized', command);
    assert.equal((await c.read()).text, '421 4.7.0 mx.test Error: too many errors', 'the 15th refusal reached maxErrors');
    assert.ok(await c.waitClosed());
    const lines = decisions(mark);
    assert.equal(lines.length, 16);
    for (const line of lines.slice(0, 15)) {
      assert.deepEqual([line.stage, line.code, line.enhanced, line.reply, line.reason], ['UNKNOWN', 500, '5.5.2', 'Error: command not recognized', 'a command not recognized (RFC 5321 §4.2.4)']);
    }
  });
});

describe('pipelined-after-refused-data', () => {
  // A DATA that is refused (no recipient accepted, no MAIL, no EHLO) while the client has already sent more
  // after it: that input is the message the client pipelined ahead of the 354 (RFC 2920 forbids it, broken
  // clients and naive senders do it), so none of its lines may run as a command. Before, each line did: a
  // message body holding `MAIL FROM`, `RCPT TO`, `DATA` and a `.` line was spooled as a second message that
  // the client never sent as one (SMTP smuggling through a refused DATA). Now the DATA gets 554 5.5.0 and the
  // connection is closed, as Postfix does with smtpd_forbid_unauth_pipelining. A client that waits for the
  // refusal goes on as before, and content pipelined after an accepted DATA is still the message.
  let server: TestServer;
  let ca = '';

  before(async () => {
    const pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    server = await startTestServer({
      config: configYaml({ localDomains: ['example.com'], listeners: [
        testListener('mx', { reverseDns: false }),
        testListener('tls', { reverseDns: false, tls: testServerTls(pki) }),
      ] }),
    });
  });
  after(() => server.stop());

  const SYNC = '554 5.5.0 Error: SMTP protocol synchronization (message content sent before the reply to DATA)';
  /** A message whose body holds a whole transaction: run as commands, it is a second, forged message. */
  const SMUGGLING_BODY = 'Subject: hi\r\n\r\nMAIL FROM:<forged@example.org>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n'
    + 'Subject: forged\r\n\r\nsmuggled\r\n.\r\n.\r\n';

  for (const listener of ['mx', 'tls'] as const) {
    test(`${listener}: the message pipelined after a DATA refused for want of recipients is not read as commands`, async () => {
      const spooled = (await server.runtime.spool.list()).length;
      const c = await SmtpTestClient.connect(server.port(listener));
      await c.hello(listener === 'tls' ? { starttls: { ca } } : {});
      c.socket.write(`MAIL FROM:<a@example.org>\r\nRCPT TO:<b@elsewhere.example>\r\nDATA\r\n${SMUGGLING_BODY}QUIT\r\n`);
      assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.text), [
        '250 2.1.0 Accepted', '554 5.7.1 <b@elsewhere.example>: Relay access denied', SYNC,
      ]);
      assert.equal((await server.runtime.spool.list()).length, spooled, 'nothing spooled');
    });
  }

  test('the same without a transaction: DATA and a message pipelined right after EHLO', async () => {
    const spooled = (await server.runtime.spool.list()).length;
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    c.socket.write(`DATA\r\n${SMUGGLING_BODY}`);
    assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.text), [SYNC]);
    assert.equal((await server.runtime.spool.list()).length, spooled, 'nothing spooled');
  });

  test('BDAT (CHUNKING is not offered): refused and closed, its chunk never read as commands', async () => {
    const spooled = (await server.runtime.spool.list()).length;
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    const chunk = `MAIL FROM:<forged@example.org>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n${SMUGGLING_BODY}`;
    c.socket.write(`BDAT ${chunk.length} LAST\r\n${chunk}`);
    assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.text), ['554 5.5.1 Error: BDAT without CHUNKING (not offered), the chunk cannot be read']);
    assert.equal((await server.runtime.spool.list()).length, spooled, 'nothing spooled');
  });

  test('a client that waits for the refusal of DATA goes on; content pipelined after an accepted DATA is the message', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@elsewhere.example>')).code, 554);
    assert.equal((await c.command('DATA')).text, '503 5.5.1 Error: need RCPT command');
    assert.equal((await c.command('RSET')).code, 250);
    c.socket.write(`MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n${SMUGGLING_BODY}QUIT\r\n`);
    const replies = (await c.repliesUntilClosed()).map((r) => r.text.replace(/queued as \S+/, 'queued as <id>'));
    assert.deepEqual(replies, ['250 2.1.0 Accepted', '250 2.1.5 Accepted', '354 End data with <CR><LF>.<CR><LF>',
      '250 2.0.0 Ok: queued as <id>', '500 5.5.2 Error: command not recognized', '221 2.0.0 Bye']);
  });
});

describe('pipelined-messages', () => {
  // Messages pipelined one behind another in one write (a client that sends the next transaction right after
  // a message's final dot): each is answered, and so is every command after them. smtp-server's parser lost
  // the continuation of the second message when the first one's continuation ran into it at once, and the
  // session stopped answering (and, half-closed, never closed) until its idle timeout.
  let server: TestServer;
  before(async () => { server = await startTestServer({ config: PLAIN_MX_CONFIG }); });
  after(() => server.stop());

  const transaction = (body: string) => `MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n${body}.\r\n`;

  test('three messages and a NOOP in one write: every reply comes, then QUIT closes', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    c.socket.write(transaction('Subject: one\r\n\r\n1\r\n') + transaction('') + transaction('Subject: three\r\n\r\n3\r\n') + 'NOOP\r\nQUIT\r\n');
    const replies = await c.repliesUntilClosed();
    assert.deepEqual(replies.map((r) => r.code), [250, 250, 354, 250, 250, 250, 354, 250, 250, 250, 354, 250, 250, 221]);
    assert.equal(replies.filter((r) => /^250 2\.0\.0 Ok: queued as /.test(r.text)).length, 3);
  });

  test('two messages in one write and a half-close: both answered, and the server closes', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    c.socket.end(transaction('b\r\n') + transaction('c\r\n'));
    const replies = await c.repliesUntilClosed();
    assert.deepEqual(replies.map((r) => r.code), [250, 250, 354, 250, 250, 250, 354, 250]);
  });
});

describe('reply-batch', () => {
  // Replies of one event-loop turn leave together at its end (engine/smtp/reply-batch.ts), on TLS sockets
  // only; nothing is lost or reordered, also when the connection closes in the same turn.
  let pki: TestPki;
  let client: TlsClientOptions;

  before(async () => {
    pki = await makeTestPki();
    client = await clientTlsOptions(pki, 'alice');
  });

  /** A connected pair on 127.0.0.1: the server's socket (TLS or plain) and the client's. */
  async function pair(useTls: boolean): Promise<{ server: net.Socket; client: net.Socket; close(): void }> {
    const listener = useTls
      ? tls.createServer({ cert: await readFile(pki.server.cert), key: await readFile(pki.server.key) })
      : net.createServer();
    listener.listen(0, '127.0.0.1');
    await once(listener, 'listening');
    const { port } = listener.address() as net.AddressInfo;
    const accepted = once(listener, useTls ? 'secureConnection' : 'connection');
    const c = useTls ? tls.connect({ port, host: '127.0.0.1', ca: client.ca, servername: 'localhost' }) : net.connect(port, '127.0.0.1');
    await once(c, useTls ? 'secureConnect' : 'connect');
    const [s] = await accepted as [net.Socket];
    return { server: s, client: c, close() { c.destroy(); s.destroy(); listener.close(); } };
  }

  test('writes to a TLS socket wait for the end of the turn, then leave together and in order', async () => {
    const p = await pair(true);
    try {
      let received = '';
      p.client.setEncoding('utf8');
      p.client.on('data', (d: string) => { received += d; });
      batchReply(p.server);
      p.server.write('250 one\r\n');
      batchReply(p.server); // a second reply in the same turn
      p.server.write('250 two\r\n');
      assert.equal(p.server.writableCorked, 1, 'held back once, not twice');
      assert.ok(p.server.writableLength > 0, 'nothing written yet');
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(p.server.writableCorked, 0, 'released at the end of the turn');
      await until('both replies at the client', () => received.length >= 18);
      assert.equal(received, '250 one\r\n250 two\r\n');
    } finally {
      p.close();
    }
  });

  test('a reply written by a script batch in the check phase leaves in that same check phase, not a turn later', async () => {
    const p = await pair(true);
    try {
      let received = '';
      p.client.setEncoding('utf8');
      p.client.on('data', (d: string) => { received += d; });
      // As the sandbox does: the batch is queued when the first call of the turn starts, and writes the
      // verdicts' replies when it runs, in the check phase.
      setImmediate(() => {
        batchReply(p.server);
        p.server.write('250 verdict\r\n');
      });
      flushAfterScriptCalls(); // as session-policy does, right after starting the call
      // Queued behind both: runs in the same check phase.
      const corked = await new Promise<number>((resolve) => setImmediate(() => resolve(p.server.writableCorked)));
      assert.equal(corked, 0, 'released in the check phase that wrote it');
      await until('the reply at the client', () => received.length >= 13);
      assert.equal(received, '250 verdict\r\n');
    } finally {
      p.close();
    }
  });

  test('a plaintext socket is never held back (a STARTTLS upgrade may follow in the same turn)', async () => {
    const p = await pair(false);
    try {
      batchReply(p.server);
      p.server.write('220 go ahead\r\n');
      assert.equal(p.server.writableCorked, 0);
    } finally {
      p.close();
    }
  });

  test('pipelined commands after STARTTLS get every reply in order, and the reply to QUIT arrives before the close', async () => {
    const s = await startTestServer({
      config: configYaml({ localDomains: ['example.com'], listeners: [testListener('sub', { tls: testServerTls(pki) })] }),
    });
    try {
      const c = await SmtpTestClient.connect(s.port('sub'));
      const ehlo = await c.hello({ starttls: client });
      assert.match(ehlo.text, /PIPELINING/);
      c.socket.write('MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@elsewhere.example>\r\nDATA\r\n');
      assert.equal((await c.read()).code, 250);
      assert.equal((await c.read()).code, 250);
      assert.equal((await c.read()).code, 554, 'relay to another domain is refused');
      assert.equal((await c.read()).code, 354);
      c.socket.write('Subject: pipelined\r\n\r\nhello\r\n.\r\nQUIT\r\n');
      assert.equal((await c.read()).code, 250);
      assert.equal((await c.read()).code, 221);
      assert.ok(await c.waitClosed(), 'the server closes after QUIT');
      assert.equal((await s.runtime.spool.list()).length, 1);
    } finally {
      await s.stop();
    }
  });
});

describe('client-reset', () => {
  // Clients that go away: a reset outside a transaction is a normal end (debug), inside one an error; one
  // that leaves in the middle of its message leaves nothing behind (message-intake.ts reads with events).
  const resetLines = (s: TestServer, level: number): Array<Record<string, unknown>> =>
    s.logs.filter((l) => l.level === level && /ECONNRESET/.test(JSON.stringify(l)));

  async function resetAfter(s: TestServer, commands: string[]): Promise<void> {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    for (const command of commands) assert.equal((await c.command(command)).code, 250);
    c.socket.resetAndDestroy();
  }


  test('a reset outside a transaction is logged at debug only; inside one it is logged at info as the client\'s fault, without a stack trace', async () => {
    const s = await startTestServer({ config: PLAIN_MX_CONFIG });
    try {
      await resetAfter(s, []);
      await until('the reset logged at debug', () => resetLines(s, 20).length > 0);
      assert.deepEqual(resetLines(s, 30).concat(resetLines(s, 50)), [], 'nothing at info or above for a client hanging up between transactions');
      await resetAfter(s, ['MAIL FROM:<a@example.com>']);
      await until('the reset logged at info', () => resetLines(s, 30).length > 0);
      assert.equal(resetLines(s, 50).length, 0, 'not a server error');
      for (const line of resetLines(s, 30)) assert.doesNotMatch(JSON.stringify(line), /"stack"/);
    } finally {
      await s.stop();
    }
  });

  test('a client that leaves mid-DATA leaves no message and no partial file; the next one is spooled', async () => {
    const s = await startTestServer({ config: PLAIN_MX_CONFIG });
    try {
      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.hello();
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
      assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      // Past the journal's 1 MiB a message streams to its own file in incoming/: that file must go too.
      const line = 'x'.repeat(998) + '\r\n';
      c.socket.write('Subject: cut off\r\n\r\n' + line.repeat(1500));
      await until('the message being written to incoming/', async () => (await readdir(s.runtime.spool.incomingDir)).length === 1);
      c.destroy();
      await until('the partial file removed', async () => (await readdir(s.runtime.spool.incomingDir)).length === 0);
      assert.deepEqual(await s.runtime.spool.list(), [], 'nothing was spooled');
      assert.equal(s.logs.filter((l) => l.msg === 'spooling failed').length, 0, 'a client leaving is not a spool failure');

      const next = await SmtpTestClient.connect(s.port('mx'));
      await next.hello();
      const reply = await next.sendMail('a@example.com', ['b@example.com']);
      assert.equal(reply.code, 250, reply.text);
      assert.equal((await s.runtime.spool.list()).length, 1);
      await next.quit();
    } finally {
      await s.stop();
    }
  });
});

describe('half-close', () => {
  // A client that half-closes (shuts its sending side after its last command, as `nc -N` does after QUIT) still
  // gets every reply due, and the server closes once they are sent. Node's default ended the server's side at
  // the client's FIN: pipelined commands went unanswered, and a message among them was spooled while its 250
  // never left — the client would send it again.
  let server: TestServer;
  let ca = '';

  before(async () => {
    const pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    server = await startTestServer({
      config: configYaml({ localDomains: ['example.com'], listeners: [
        testListener('mx', { reverseDns: false }),
        testListener('tls', { reverseDns: false, tls: testServerTls(pki) }),
        testListener('implicit', { reverseDns: false, tls: testServerTls(pki, { mode: 'implicit' }) }),
      ] }),
      // A script on the way: the replies wait for its calls, which finish after the client's FIN.
      scripts: { 'rcptto.ts': 'export default (ctx) => ctx.address.localPart === "nobody" ? reject("No such user", { code: 550, enhanced: "5.1.1" }) : undefined' },
    });
  });
  after(() => server.stop());

  const TRANSACTION = 'MAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: half\r\n\r\nhi\r\n.\r\n';

  for (const listener of ['mx', 'tls', 'implicit'] as const) {
    test(`${listener}: a pipelined transaction and QUIT, then FIN: every reply arrives, the message is spooled once, then the server closes`, async () => {
      const c = await SmtpTestClient.connect(server.port(listener), listener === 'implicit' ? { implicitTls: { ca } } : {});
      await c.hello(listener === 'tls' ? { starttls: { ca } } : {});
      c.socket.end(`${TRANSACTION}QUIT\r\n`);
      const replies = await c.repliesUntilClosed();
      assert.deepEqual(replies.map((r) => r.text.replace(/queued as \S+/, 'queued as <id>')), [
        '250 2.1.0 Accepted', '550 5.1.1 No such user', '250 2.1.5 Accepted', '354 End data with <CR><LF>.<CR><LF>',
        '250 2.0.0 Ok: queued as <id>', '221 2.0.0 Bye',
      ]);
      const id = /queued as (\S+)/.exec(replies[4]!.text)![1]!;
      assert.deepEqual((await server.runtime.spool.readEnvelope(id)).recipients.map((r) => r.address), ['b@example.com']);
    });
  }

  test('FIN without QUIT: the commands sent are answered, then the server closes its side', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    c.socket.end('MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n');
    assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.text), ['250 2.1.0 Accepted', '250 2.1.5 Accepted']);
  });

  test('FIN in the middle of a message: nothing is spooled, the server closes', async () => {
    const before = (await server.runtime.spool.list()).length;
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    c.socket.end('MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: cut\r\n\r\nno final dot\r\n');
    assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.code), [250, 250, 354]);
    assert.equal((await server.runtime.spool.list()).length, before, 'a message without its final dot is never spooled');
  });
});

describe('leave-at-every-stage', () => {
  // A client that resets (RST) or half-closes (FIN) at every stage of a session, plain and inside STARTTLS, AUTH
  // and DATA included: afterwards nothing of it is left — no per-address slot, no session, no bytes held for a
  // message, no partial file — and the server still serves the next client.
  let server: TestServer;
  let ca: string;

  before(async () => {
    const pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    auth: { mechanisms: [LOGIN] }
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(() => server.stop());

  type Stage = { name: string; go(c: SmtpTestClient): Promise<void> };

  const mailUpTo = (c: SmtpTestClient, data: boolean) => async (): Promise<void> => {
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    if (data) assert.equal((await c.command('DATA')).code, 354);
  };

  const STAGES: Stage[] = [
    { name: 'before the greeting is read', go: async () => undefined },
    { name: 'after the greeting', go: async (c) => { await c.read(); } },
    { name: 'in the middle of a command', go: async (c) => { await c.read(); c.socket.write('EHLO half'); } },
    { name: 'after EHLO', go: async (c) => { await c.hello(); } },
    { name: 'after STARTTLS, before the ClientHello', go: async (c) => { await c.read(); await c.command('EHLO x'); assert.equal((await c.command('STARTTLS')).code, 220); } },
    { name: 'in the middle of the TLS handshake', go: async (c) => { await c.read(); await c.command('EHLO x'); await c.command('STARTTLS'); c.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])); } },
    { name: 'inside TLS, in an AUTH LOGIN exchange', go: async (c) => { await c.hello({ starttls: { ca } }); assert.equal((await c.command('AUTH LOGIN')).code, 334); } },
    { name: 'inside TLS, after RCPT TO', go: async (c) => { await c.hello({ starttls: { ca } }); await mailUpTo(c, false)(); } },
    { name: 'inside TLS, in the middle of DATA', go: async (c) => { await c.hello({ starttls: { ca } }); await mailUpTo(c, true)(); c.socket.write('Subject: x\r\n\r\n' + 'y'.repeat(200_000)); } },
    { name: 'plain, in the middle of DATA', go: async (c) => { await c.hello(); await mailUpTo(c, true)(); c.socket.write('Subject: x\r\n\r\n' + 'y'.repeat(50_000)); } },
    { name: 'right after the final dot', go: async (c) => { await c.hello(); await mailUpTo(c, true)(); c.socket.write('Subject: x\r\n\r\nbody\r\n.\r\n'); } },
  ];

  function openFrom(): number {
    return (server.servers.get('mx')!.connectionCounter as LocalConnectionCounter).count('127.0.0.1');
  }

  async function nothingLeft(what: string): Promise<void> {
    await until(`${what}: no slot, no session, no bytes held`, () =>
      openFrom() === 0 && server.servers.get('mx')!.connections.size === 0 && server.runtime.spool.heldBytes === 0);
    await until(`${what}: no partial file`, async () => (await readdir(server.runtime.spool.incomingDir)).length === 0);
  }

  for (const how of ['RST', 'FIN'] as const) {
    for (const stage of STAGES) {
      test(`${how} ${stage.name}: nothing is left behind`, async () => {
        const logged = server.logs.length;
        const c = await SmtpTestClient.connect(server.port('mx'));
        const tcp = c.socket; // under TLS too: the reset is the TCP connection's
        await stage.go(c);
        if (how === 'RST') tcp.resetAndDestroy();
        else c.socket.end();
        if (how === 'FIN') {
          assert.ok(await c.waitClosed(30_000), 'the server closes its side after the client\'s FIN');
          // For the FIN itself: a handshake that can no longer complete was held until its deadline (10 s) and closed then.
          assert.ok(!server.logs.slice(logged).some((l) => l.msg === 'STARTTLS handshake not completed in time: closed'), 'closed for the FIN, not at the handshake deadline');
        }
        await nothingLeft(`${how} ${stage.name}`);
      });
    }
  }

  test('after all of them, a client is served as usual', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello({ starttls: { ca } });
    assert.equal((await c.sendMail('a@example.com', ['b@example.com'])).code, 250);
    await c.quit();
    await nothingLeft('a normal session');
  });
});

describe('message-limits', () => {
  // Hostile DATA: far more than maxMessageSize, and huge header sections sent in tiny pieces.
  const LIMIT = 100 * 1024;
  const HEADER_LIMIT = 64 * 1024;
  const FIELD_LIMIT = 50;
  let server: TestServer;
  const writers: SpoolWriter[] = [];

  before(async () => {
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0, maxMessageSize: ${LIMIT}, maxHeaderBytes: ${HEADER_LIMIT} }
  - name: big
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
  - name: fields
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0, maxHeaderFields: ${FIELD_LIMIT} }
`,
      scripts: {
        'data.ts': `export default (ctx) => { const h = ctx.data.headers;
        if (h[0] && h[0][1] === 'fields' && h.length !== ${FIELD_LIMIT}) return reject('saw ' + h.length + ' fields', { code: 550 });
        if (h[0] && h[0][1] === 'slow' && (h.length !== 2501 || h[2500][0] !== 'X-Filler-2499')) return reject('saw ' + h.length + ' fields', { code: 550 }); };`,
      },
    });
    // Every writer the spool hands out, to see how many bytes each transaction was given.
    const spool = server.runtime.spool;
    const create = spool.create.bind(spool);
    spool.create = (id: string) => {
      const w = create(id);
      writers.push(w);
      return w;
    };
  });
  after(() => server.stop());

  async function incomingBytes(): Promise<number> {
    const dir = server.runtime.spool.incomingDir;
    let total = 0;
    for (const name of await readdir(dir)) total += await stat(join(dir, name)).then((s) => s.size, () => 0);
    return total;
  }

  async function startData(c: SmtpTestClient): Promise<void> {
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
  }

  /** Write `data` and wait until the kernel took it (so a huge stream does not sit in the client's memory). */
  function send(c: SmtpTestClient, data: string | Buffer): Promise<void> {
    return new Promise((resolve, reject) => c.socket.write(data, (err) => (err ? reject(err) : resolve())));
  }

  test('a message far over maxMessageSize: nothing past the limit is spooled, 552 5.3.4 after the dot, the connection goes on', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    const first = writers.length;
    await startData(c);
    const line = Buffer.from('x'.repeat(998) + '\r\n');
    const block = Buffer.concat(Array.from({ length: 256 }, () => line)); // 256 KB
    await send(c, 'Subject: big\r\n\r\n');
    let largestIncoming = 0;
    for (let i = 0; i < 40; i++) { // 10 MB, a hundred times the limit
      await send(c, block);
      largestIncoming = Math.max(largestIncoming, await incomingBytes());
    }
    await send(c, '.\r\n');
    const reply = await c.read(60_000);
    assert.equal(reply.text, '552 5.3.4 Message size exceeds fixed maximum message size');
    const writer = writers[first];
    assert.ok(writer, 'the transaction had a spool writer');
    assert.ok(writer.bytes <= LIMIT + 2048, `the spool was given ${writer.bytes} bytes (limit ${LIMIT} + our Received header)`);
    assert.ok(largestIncoming <= LIMIT + 2048, `incoming/ held ${largestIncoming} bytes during the transfer`);
    assert.equal(await incomingBytes(), 0);
    assert.deepEqual(await server.runtime.spool.list(), []);

    assert.equal((await c.command('RSET')).code, 250);
    const next = await c.sendMail('a@example.com', ['b@example.com']);
    assert.equal(next.code, 250, next.text);
    await c.quit();
  });

  test('a header section read in 16-byte pieces is searched in linear time; the data hook sees its fields', async () => {
    const c = await SmtpTestClient.connect(server.port('big'));
    await c.hello();
    await startData(c);
    const fields = Array.from({ length: 2500 }, (_, i) => `X-Filler-${i}: ${'h'.repeat(80)}\r\n`).join(''); // ~250 KB
    const header = `Subject: slow\r\n${fields}`;
    c.socket.setNoDelay(true);
    const before = headerBytesScanned();
    const bytes = Buffer.from(header + '\r\nbody\r\n');
    for (let at = 0; at < bytes.length; at += 16) await send(c, bytes.subarray(at, at + 16));
    await send(c, '.\r\n');
    const reply = await c.read(60_000);
    assert.equal(reply.code, 250, reply.text);
    const scanned = headerBytesScanned() - before;
    assert.ok(scanned <= 3 * bytes.length, `searched ${scanned} bytes for a ${bytes.length}-byte message`);
    await c.quit();
  });

  test('a header section over maxHeaderBytes gets 552 5.3.4 and is not spooled; the next message is', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    const spooled = (await server.runtime.spool.list()).length;
    const first = writers.length;
    await startData(c);
    const fields = Array.from({ length: 1000 }, (_, i) => `X-Filler-${i}: ${'h'.repeat(80)}\r\n`).join(''); // ~90 KB
    await send(c, `Subject: fat\r\n${fields}\r\nbody\r\n.\r\n`);
    const reply = await c.read(60_000);
    assert.equal(reply.text, `552 5.3.4 Message header section exceeds fixed maximum size of ${HEADER_LIMIT} bytes`);
    assert.ok(writers[first]!.bytes <= HEADER_LIMIT + 4096, `the spool was given ${writers[first]!.bytes} bytes`);
    assert.equal((await server.runtime.spool.list()).length, spooled);
    const ok = await c.sendMail('a@example.com', ['b@example.com'], `Subject: fine\r\n${fields.slice(0, 30_000)}\r\nbody\r\n`);
    assert.equal(ok.code, 250, ok.text);
    await c.quit();
  });

  test('a header bomb (250,000 short fields within maxHeaderBytes) gets 552 5.3.4 after the dot and nothing is spooled', async () => {
    // On the listener with default limits: 1 MB of header section is allowed, 5000 fields are not. Each field would be
    // an entry of ctx.data.headers: a script going through them ran out of its time, and the client got 451 (retried
    // for ever) instead of a refusal.
    const c = await SmtpTestClient.connect(server.port('big'));
    await c.hello();
    const spooled = (await server.runtime.spool.list()).length;
    await startData(c);
    const bomb = Buffer.from('a:\r\n'.repeat(250_000)); // 1,000,000 bytes, under the 1 MiB maxHeaderBytes
    await send(c, bomb);
    await send(c, '\r\nbody\r\n.\r\n');
    const reply = await c.read(60_000);
    assert.equal(reply.text, '552 5.3.4 Message header section exceeds fixed maximum of 5000 fields');
    assert.equal((await server.runtime.spool.list()).length, spooled);
    assert.equal(await incomingBytes(), 0);
    // The connection goes on; a decision line names the limit.
    const ok = await c.sendMail('a@example.com', ['b@example.com'], 'Subject: fine\r\n\r\nbody\r\n');
    assert.equal(ok.code, 250, ok.text);
    await c.quit();
    const line = server.logs.find((l) => l.reason === 'limits.maxHeaderFields');
    assert.ok(line, 'a decision line with the reason limits.maxHeaderFields');
    assert.equal(line.decision, 'reject');
  });

  test('maxHeaderFields counts fields, not folded lines: exactly the limit passes (the hook sees them all), one more is refused', async () => {
    const c = await SmtpTestClient.connect(server.port('fields'));
    await c.hello();
    // 50 fields, each folded over three lines, with LF and CRLF line ends mixed.
    const fields = ['Subject: fields\r\n', ...Array.from({ length: FIELD_LIMIT - 1 }, (_, i) => `X-F${i}: a\r\n b\n\tc${i % 2 ? '\r\n' : '\n'}`)].join('');
    const ok = await c.sendMail('a@example.com', ['b@example.com'], `${fields}\r\nbody\r\n`);
    assert.equal(ok.code, 250, ok.text);
    const over = await c.sendMail('a@example.com', ['b@example.com'], `${fields}X-One-More: x\r\n\r\nbody\r\n`);
    assert.equal(over.text, `552 5.3.4 Message header section exceeds fixed maximum of ${FIELD_LIMIT} fields`);
    // Lines after the empty line are body, however many.
    const body = await c.sendMail('a@example.com', ['b@example.com'], `${fields}\r\n${'b:\r\n'.repeat(1000)}`);
    assert.equal(body.code, 250, body.text);
    await c.quit();
  });
});

describe('reply-text', () => {
  // A script's reply text reaches the client as one line: line breaks of any kind (CR, LF, NEL, U+2028/2029)
  // and other controls become spaces, so a verdict cannot split the reply (a forged "250" after its 550) nor
  // carry terminal controls to whoever reads the client's transcript; nor be longer than a reply line may be
  // (512 octets, RFC 5321 §4.5.3.1.5), counted in bytes, whatever a client fed it. Real SMTP on 127.0.0.1.
  test('verdict texts with CR LF, NEL, C1 controls and Unicode line separators stay one clean line', async () => {
    const server = await startTestServer({
      config: configYaml({ localDomains: ['example.com'], listeners: [testListener('in', { tls: { mode: 'none' } })] }),
      scripts: {
        'rcptto.ts': `const TEXTS = {
  crlf: 'No\\r\\n250 2.1.5 forged',
  nel: 'No\\u0085250 forged',
  c1: 'No\\u009b31m red',
  ls: 'No\\u2028250 forged\\u2029end',
};
export default function (ctx) { return reject(TEXTS[ctx.address.localPart]); }`,
      },
    });
    try {
      const c = await SmtpTestClient.connect(server.port('in'));
      await c.hello();
      assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
      const expected: Record<string, string> = {
        crlf: '550 5.7.1 No 250 2.1.5 forged', nel: '550 5.7.1 No 250 forged', c1: '550 5.7.1 No 31m red', ls: '550 5.7.1 No 250 forged end',
      };
      for (const [local, line] of Object.entries(expected)) {
        const r = await c.command(`RCPT TO:<${local}@example.com>`);
        assert.equal(r.text, line, local);
      }
      // Nothing else arrived: the next command's reply is its own.
      assert.equal((await c.command('NOOP')).code, 250);
      await c.quit();
    } finally {
      await server.stop();
    }
  });

  /** Every reply line the server writes, as bytes: the greeting, then one reply per command, each awaited. */
  async function rawReplyLines(port: number, commands: Buffer[]): Promise<Buffer[]> {
    const socket = net.connect(port, '127.0.0.1');
    let all = Buffer.alloc(0);
    let wake: () => void = () => undefined;
    socket.on('data', (d: Buffer) => { all = Buffer.concat([all, d]); wake(); });
    socket.on('error', () => undefined);
    const linesOf = (): Buffer[] => {
      const lines: Buffer[] = [];
      for (let from = 0, at = all.indexOf('\r\n'); at !== -1; from = at + 2, at = all.indexOf('\r\n', from)) lines.push(all.subarray(from, at + 2));
      return lines;
    };
    /** Until `n` replies have ended (a line `ddd ` ends one; `ddd-` goes on). */
    const replies = async (n: number): Promise<void> => {
      while (linesOf().filter((l) => l[3] === 0x20).length < n) await new Promise<void>((resolve) => { wake = resolve; });
    };
    await replies(1);
    for (const [i, command] of commands.entries()) {
      socket.write(command);
      await replies(i + 2);
    }
    socket.end('QUIT\r\n');
    await closed(socket);
    return linesOf().filter((l) => !l.toString().startsWith('250-'));
  }

  test('a script\'s reply text is one line of at most 512 octets (RFC 5321), whatever a client\'s non-ASCII name puts in it, and no character is cut in half', async () => {
    const s = await startTestServer({
      config: PLAIN_MX_CONFIG,
      scripts: {
        // A careless script: the client's HELO name repeated into the reply.
        'helo.ts': `export default (ctx) => ctx.helo.name.startsWith('x') ? reject('bad ' + ctx.helo.name.repeat(200)) : undefined;`,
        'mailfrom.ts': `export default (ctx) => ctx.address.localPart === 'emoji' ? reject('a' + '\\u{1F600}'.repeat(200)) : undefined;`,
      },
    });
    try {
      const lines = await rawReplyLines(s.port('mx'), [
        Buffer.from(`EHLO x${'ü'.repeat(20)}.example\r\n`), // 49 bytes of UTF-8 in 29 characters, 200 times
        Buffer.from('EHLO client.example\r\n'),
        Buffer.from('MAIL FROM:<emoji@b.example> SMTPUTF8\r\n'), // UTF-8 replies only to SMTPUTF8 (see below)
      ]);
      for (const line of lines) assert.ok(line.length <= 512, `a reply line of ${line.length} octets: ${line.toString().slice(0, 60)}…`);
      const text = lines.map((l) => l.toString('utf8'));
      assert.ok(!text.join('').includes('\uFFFD'), 'no character cut in half');
      assert.match(text[1]!, /^550 5\.7\.1 bad (x\?{20}\.example)+x\?*\r\n$/); // 7-bit: the client did not say SMTPUTF8
      const emoji = text.find((t) => t.startsWith('550 5.7.1 a\u{1F600}'));
      assert.equal(emoji, `550 5.7.1 a${'\u{1F600}'.repeat(99)}\r\n`); // 1 + 99 × 4 = 397 bytes of text: the 100th would pass 400
    } finally { await s.stop(); }
  });

  test('the data hook\'s long accept text gives way to the queue id: the reply still says which message was queued', async () => {
    const s = await startTestServer({
      config: PLAIN_MX_CONFIG,
      scripts: { 'data.ts': `export default () => accept({ text: 'Thank you '.repeat(40) });` },
    });
    try {
      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.hello();
      const r = await c.sendMail('a@b.example', ['x@example.com']);
      const id = /: queued as ([0-9a-z]+)$/.exec(r.text)?.[1];
      assert.ok(id, r.text);
      assert.ok(r.text.startsWith('250 2.0.0 Thank you Thank you'), r.text);
      assert.ok(Buffer.byteLength(r.text) + 2 <= 512);
      await s.runtime.spool.readEnvelope(id); // the id names the message spooled
      await c.quit();
    } finally { await s.stop(); }
  });

  // RFC 5321 §2.4, RFC 6531 §3.7.4.2: replies are ASCII unless the transaction's MAIL FROM declared SMTPUTF8. A
  // script's text in the operator's language, or built from a client's UTF-8 HELO name or address, went out as
  // UTF-8 to every client (one reading replies as Latin-1 or ASCII shows mojibake, a strict one fails the reply).
  test('UTF-8 in reply texts goes only to a transaction that declared SMTPUTF8; any other reply is 7-bit, each character "?"', async () => {
    const s = await startTestServer({
      config: PLAIN_MX_CONFIG,
      scripts: {
        'helo.ts': `export default (ctx) => ctx.helo.name.startsWith('r') ? reject('Nom refusé: ' + ctx.helo.name) : undefined;`,
        'mailfrom.ts': `export default (ctx) => ctx.address.localPart === 'no' ? reject('Expéditeur refusé') : undefined;`,
        'rcptto.ts': `export default (ctx) => reject('Destinataire inconnu: ' + ctx.address.address + ' 🚫');`,
      },
    });
    try {
      const lines = await rawReplyLines(s.port('mx'), [
        Buffer.from('EHLO réseau.example\r\n'),
        Buffer.from('EHLO client.example\r\n'),
        Buffer.from('MAIL FROM:<no@b.example>\r\n'),
        Buffer.from('MAIL FROM:<a@b.example>\r\n'),
        Buffer.from('RCPT TO:<x@xn--bcher-kva.example>\r\n'),
        Buffer.from('RSET\r\n'),
        Buffer.from('MAIL FROM:<no@b.example> SMTPUTF8\r\n'),
        Buffer.from('MAIL FROM:<a@b.example> SMTPUTF8\r\n'),
        Buffer.from('RCPT TO:<jörg@bücher.example>\r\n'),
        Buffer.from('RSET\r\n'),
        Buffer.from('MAIL FROM:<a@b.example>\r\n'),
        Buffer.from('RCPT TO:<x@example.com>\r\n'),
      ]);
      const text = lines.map((l) => l.toString('utf8').trimEnd());
      assert.deepEqual(text.filter((t) => /^5/.test(t)), [
        '550 5.7.1 Nom refus?: r?seau.example',
        '550 5.7.1 Exp?diteur refus?',
        '550 5.7.1 Destinataire inconnu: x@xn--bcher-kva.example ?',
        '550 5.7.1 Expéditeur refusé', // the MAIL FROM that declared SMTPUTF8: its own reply may be UTF-8
        '550 5.7.1 Destinataire inconnu: jörg@bücher.example 🚫',
        '550 5.7.1 Destinataire inconnu: x@example.com ?', // a new transaction without SMTPUTF8
      ]);
      // eslint-disable-next-line no-control-regex
      const eightBit = lines.filter((l) => /[^\x00-\x7f]/.test(l.toString('latin1')));
      assert.equal(eightBit.length, 2, 'only the two replies within SMTPUTF8 carry 8-bit octets');
    } finally { await s.stop(); }
  });
});

describe('held-event-loop-timeouts', () => {
  /**
   * A client that sent its line within `socketTimeoutMs` is not timed out, however late the server's event loop gets
   * to it. The client runs on its own thread (its own event loop), so it sends while the test holds the server's,
   * as a loaded machine that descheduled the server, or one long turn of other work, holds it: the line then waits
   * in the socket while the time limit passes. An event loop that gets the CPU back runs its timers before it reads
   * its sockets, and the idle timeout (smtp-server's) and the line deadline (line-deadline.ts), judged in their
   * timers, answered `421 Timeout - closing connection` to a client that had done nothing wrong.
   */
  const TIMEOUT_MS = 2000;

  const asleep = new Int32Array(new SharedArrayBuffer(4));
  /** Hold this thread's event loop for `ms` (the server's sessions are all on it). */
  function holdEventLoop(ms: number): void {
    // Blocked, not spinning: the thread is held all the same (no timer runs, no socket is read), without a core's CPU.
    Atomics.wait(asleep, 0, 0, ms);
  }

  /**
   * A client on its own thread: connects, sends each of `setup` once the reply before it is in (the greeting first),
   * then `first` (part of a line, or nothing), and tells the test (message 'ready'); once told to go (flags[0] = 1)
   * sends `rest` and sets flags[1]; posts every reply it reads after that.
   */
  function clientThread(port: number, setup: readonly string[], first: string, rest: string, flags: Int32Array): Worker {
    return new Worker(`
    const net = require('node:net');
    const { parentPort, workerData: { port, setup, first, rest, flags } } = require('node:worker_threads');
    const s = net.connect(port, '127.0.0.1');
    let seen = '';
    let step = 0;
    s.on('data', (b) => {
      seen += b.toString('latin1');
      if (!/^\\d{3} .*\\r\\n/m.test(seen)) return; // a reply's last line
      const got = seen;
      seen = '';
      if (step < setup.length) { s.write(setup[step++]); return; }
      if (step === setup.length) {
        step++;
        if (first) s.write(first);
        parentPort.postMessage('ready');
        Atomics.wait(flags, 0, 0); // until the test holds the server's event loop
        s.write(rest, () => Atomics.store(flags, 1, 1));
        return;
      }
      parentPort.postMessage(got);
    });`, { eval: true, workerData: { port, setup, first, rest, flags } });
  }

  const EHLO = ['EHLO client.test\r\n'];
  const TO_DATA = [...EHLO, 'MAIL FROM:<a@example.org>\r\n', 'RCPT TO:<b@example.com>\r\n', 'DATA\r\n'];
  const CASES = [
    ['a whole command', EHLO, '', 'NOOP\r\n', 'socketTimeoutMs'],
    ['the end of a line begun before', EHLO, 'NO', 'OP\r\n', 'socketTimeoutMs'],
    ['the end of a message begun before', TO_DATA, 'Subject: held\r\n', '\r\nbody\r\n.\r\n', 'dataTimeoutMs'],
    // smtp-server parses the rest of a chunk after each dot-stuffed line in the next turn: the final dot, read in time,
    // was still in the parser when the deadline was looked at.
    ['the end of a message with dot-stuffed lines begun before', TO_DATA, 'Subject: held\r\n', '\r\n..a\r\n..b\r\n.\r\n', 'dataTimeoutMs'],
  ] as const;

  for (const [what, setup, first, rest, limit] of CASES) {
    test(`${what} sent within ${limit} while the server's event loop was held past it: answered, not timed out`, async () => {
      const s = await startTestServer({ config: PLAIN_MX_CONFIG.replace('limits: { greetingDelayMs: 0 }', `limits: { greetingDelayMs: 0, ${limit}: ${TIMEOUT_MS} }`) });
      const flags = new Int32Array(new SharedArrayBuffer(8));
      const client = clientThread(s.port('mx'), setup, first, rest, flags);
      try {
        await once(client, 'message'); // 'ready': the server's clocks run from its last reply (and the line begun)
        const reply = once(client, 'message');
        // From here the event loop is held: the client sends at once; the hold lasts past the time limit.
        Atomics.store(flags, 0, 1);
        Atomics.notify(flags, 0);
        while (Atomics.load(flags, 1) === 0) holdEventLoop(1);
        holdEventLoop(TIMEOUT_MS + 200);
        assert.match(String((await reply)[0]), /^250 /);
      } finally {
        await client.terminate();
        await s.stop();
      }
    });
  }
});

describe('test-client-refusals', () => {
  // The tests' SMTP client is strict about recipients: a RCPT refused (here a script failure's 451, as a script
  // timeout under load gives) fails the send unless the test expected it, so no test silently sends to fewer
  // recipients than it meant. The refusals a test expects come back for it to assert.
  let s: TestServer;
  before(async () => {
    s = await startTestServer({
      config: configYaml({ localDomains: ['example.com'], listeners: [testListener('mx', { tls: { mode: 'none' } })] }),
      scripts: { 'rcptto.js': 'export default function (ctx) { if (ctx.address.localPart === "broken") throw new Error("script failure"); }\n' },
    });
  });
  after(() => s.stop());

  async function greeted(): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    return c;
  }

  const queueId = (text: string): string => /queued as ([0-9a-z]+)/.exec(text)![1]!;

  test('a refused RCPT fails the send, naming the recipient and the reply, and no message is sent', async () => {
    const c = await greeted();
    await assert.rejects(c.sendMail('a@sender.example', ['one@example.com', 'broken@example.com', 'two@example.com']),
      /^Error: RCPT TO:<broken@example\.com> refused: 451 4\.3\.0 /);
    assert.ok(!c.transcript.includes('C: DATA'), c.transcript.join('\n'));
    await c.quit();
    await assert.rejects(submitMessage(s.port('mx'), 'a@sender.example', ['broken@example.com', 'one@example.com']),
      /RCPT TO:<broken@example\.com> refused: 451 /);
  });

  test('the refusals a test names are returned; the message goes to the others', async () => {
    const c = await greeted();
    const r = await c.sendMail('a@sender.example', ['one@example.com', 'broken@example.com', 'two@example.com'], undefined,
      { refusedOk: ['broken@example.com'] });
    await c.quit();
    assert.equal(r.code, 250, r.text);
    assert.deepEqual(r.refused.map((f) => [f.rcpt, f.reply.code]), [['broken@example.com', 451]]);
    assert.deepEqual((await s.runtime.spool.readEnvelope(queueId(r.text))).recipients.map((x) => x.address), ['one@example.com', 'two@example.com']);
  });

  test('a recipient named as refused but accepted fails the send', async () => {
    const c = await greeted();
    await assert.rejects(c.sendMail('a@sender.example', ['one@example.com'], undefined, { refusedOk: ['one@example.com'] }),
      /RCPT TO:<one@example\.com> accepted, expected a refusal/);
    await c.quit();
  });

  test('refusedOk: true takes any refusal; when every recipient is refused the last RCPT reply is returned', async () => {
    const c = await greeted();
    const r = await c.sendMail('a@sender.example', ['broken@example.com'], undefined, { refusedOk: true });
    assert.match(r.text, /^451 4\.3\.0 /);
    assert.deepEqual(r.refused.map((f) => f.rcpt), ['broken@example.com']);
    assert.ok(!c.transcript.includes('C: DATA'));
    await c.quit();
  });
});
