// The envelope and the trace fields the server adds: Received (its user, 7bit, continuation lines), the hop limit,
// addresses in canonical form, SMTPUTF8 and the bare postmaster. One file for what were several (one test process and
// one load of the engine instead of one each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createCertificateAuthority, issueClientCertificate } from '../../engine/certificates/index.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { runCli } from '../helpers/cli.ts';

describe('received-7bit', () => {
  // Our Received header is 7-bit for a message that is not SMTPUTF8 (RFC 5322; RFC 6531 allows UTF-8 only
  // in an SMTPUTF8 transaction): a UTF-8 HELO name that is a valid IDN is written as its A-labels (xn--…),
  // any other non-ASCII character of the HELO, of a certificate's subject or issuer, as "?" (as Postfix's
  // printable()). An SMTPUTF8 transaction keeps the UTF-8 and says so: `with UTF8SMTP`, `UTF8SMTPS`
  // (RFC 6531 §3.7.7). Real client: python smtplib sending UTF-8 commands, STARTTLS with a client
  // certificate whose names are UTF-8; the spooled header is read back.
  const run = promisify(execFile);
  let server: TestServer;
  let pki: TestPki;
  let clientCert = '';
  let clientKey = '';

  before(async () => {
    pki = await makeTestPki();
    const root = await createCertificateAuthority({ commonName: 'Ünïcode Root', keyType: 'ecdsa' });
    const leaf = await issueClientCertificate(root, { commonName: 'Zoë Müller', keyType: 'ecdsa' });
    server = await startTestServer({
      files: { 'root.crt': root.cert },
      config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [root.crt] }
    limits: { greetingDelayMs: 0 }
`,
    });
    clientCert = join(server.dir, 'client.crt');
    clientKey = join(server.dir, 'client.key');
    await writeFile(clientCert, leaf.cert);
    await writeFile(clientKey, leaf.key);
  });
  after(() => server?.stop());

  /**
   * One python smtplib session: EHLO `helo` (UTF-8 on the wire), STARTTLS with the client certificate if
   * `tls`, then one message per entry of `smtputf8` (MAIL FROM with SMTPUTF8 or not). The spooled Received
   * headers, raw bytes.
   */
  async function receivedHeaders(helo: string, tls: boolean, smtputf8: boolean[]): Promise<Buffer[]> {
    const py = `
import smtplib, ssl, sys, json
helo, tls, utf8s = sys.argv[2], sys.argv[3] == '1', json.loads(sys.argv[6])
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=60)
s.command_encoding = 'utf-8'
s.ehlo(helo)
if tls:
    ctx = ssl.create_default_context(cafile=sys.argv[4])
    ctx.check_hostname = False
    ctx.load_cert_chain(sys.argv[5], sys.argv[7])
    s.starttls(context=ctx)
    s.ehlo(helo)
for utf8 in utf8s:
    code, msg = s.mail('sender@example.org', ['SMTPUTF8'] if utf8 else [])
    assert code == 250, msg
    code, msg = s.rcpt('b@example.com')
    assert code == 250, msg
    code, msg = s.data(b'Subject: hi\\r\\n\\r\\nhello\\r\\n')
    assert code == 250, msg
    print(msg.decode())
s.quit()
`;
    const { stdout } = await run('python3', ['-c', py, String(server.port('mx')), helo, tls ? '1' : '0', pki.ca.cert, clientCert, JSON.stringify(smtputf8), clientKey]);
    const ids = stdout.trim().split('\n').map((line) => /queued as (\S+)/.exec(line)![1]!);
    return Promise.all(ids.map((id) => server.runtime.spool.readMessage(id)));
  }

  /** Our Received header (the first field) of a spooled message's bytes. */
  function firstField(head: Buffer): Buffer {
    const text = head.toString('latin1');
    const end = text.search(/\r\n(?![ \t])/);
    return head.subarray(0, end);
  }

  const isSevenBit = (b: Buffer): boolean => b.every((byte) => byte < 0x80);

  test('not SMTPUTF8, over TLS with a certificate named in UTF-8: an IDN HELO as its A-label, the names with "?", 7-bit', { timeout: 120_000 }, async () => {
    const [head] = await receivedHeaders('mx.bücher.example', true, [false]);
    const received = firstField(head!);
    assert.ok(isSevenBit(received), received.toString());
    const text = received.toString();
    assert.match(text, /^Received: from mx\.xn--bcher-kva\.example \(unknown \[127\.0\.0\.1\]\)/);
    assert.match(text, /\(Client CN "Zo\? M\?ller", Issuer "\?n\?code Root" \(verified OK\)\)/);
    assert.match(text, /with ESMTPS id /);
  });

  test('not SMTPUTF8: a UTF-8 HELO that is no domain name has "?" for each non-ASCII character', { timeout: 120_000 }, async () => {
    const [head] = await receivedHeaders('bad_näme', false, [false]);
    const received = firstField(head!);
    assert.ok(isSevenBit(received), received.toString());
    assert.match(received.toString(), /^Received: from bad_n\?me \(unknown/);
  });

  test('SMTPUTF8 keeps the UTF-8 and says UTF8SMTPS; the next message of the same session, not SMTPUTF8, is 7-bit again', { timeout: 120_000 }, async () => {
    const [utf8, plain] = await receivedHeaders('mx.bücher.example', true, [true, false]);
    const first = firstField(utf8!).toString('utf8');
    assert.match(first, /^Received: from mx\.bücher\.example \(/);
    assert.match(first, /Client CN "Zoë Müller", Issuer "Ünïcode Root"/);
    assert.match(first, /with UTF8SMTPS id /);
    const second = firstField(plain!);
    assert.ok(isSevenBit(second), second.toString());
    assert.match(second.toString(), /from mx\.xn--bcher-kva\.example .*with ESMTPS id /s);
  });
});

describe('received-continuation', () => {
  // A client's message that starts with a space or a tab: that first line is no field of its own, and right
  // after our Received header a reader takes it for a continuation of it (RFC 5322 §2.2.3), so a client could
  // write into our trace header ("(Authenticated sender: ceo@…)"), or, with a header edit, into a field the
  // data hook adds. Such a message has no header section of its own (as Exim reads it): an empty line goes
  // after our header, and the client's lines are body. Real server, real spool, with and without a data hook.
  let plain: TestServer;
  let hooked: TestServer;
  const LISTENER = 'listeners:\n  - name: mx\n    listen: 127.0.0.1:0\n    limits: { greetingDelayMs: 0 }\nlocalDomains: [example.com]\n';

  before(async () => {
    plain = await startTestServer({ config: LISTENER });
    hooked = await startTestServer({
      config: LISTENER,
      scripts: { 'data.ts': `export default async (ctx) => accept({ text: 'headers=' + ctx.data.headers.length + ' body=' + JSON.stringify((await ctx.message.text()).slice(0, 12)), headers: [{ op: 'add', name: 'X-Checked', value: 'yes' }] });` },
    });
  });
  after(async () => {
    await plain?.stop();
    await hooked?.stop();
  });

  async function spooled(server: TestServer, message: string): Promise<{ reply: string; head: string[]; body: string }> {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    const r = await c.sendMail('a@example.org', ['b@example.com'], message);
    await c.quit();
    const id = /queued as ([0-9a-z]+)/.exec(r.text)?.[1] ?? /id=([0-9a-z]+)/.exec(r.text)?.[1];
    assert.ok(r.code === 250, r.text);
    const ids = await server.runtime.spool.list();
    const text = (await server.runtime.spool.readMessage(id ?? ids.at(-1)!)).toString('utf8');
    const end = text.indexOf('\r\n\r\n');
    // The header fields as a reader unfolds them.
    const head = text.slice(0, end).split(/\r\n(?![ \t])/).map((f) => f.replace(/\r\n[ \t]+/g, ' '));
    return { reply: r.text, head, body: text.slice(end + 4) };
  }

  const HOSTILE = '\t(Authenticated sender: ceo@example.com)\r\nSubject: urgent\r\n\r\nPay now.\r\n';

  for (const leading of ['\t', ' ']) {
    test(`a message starting with ${JSON.stringify(leading)} cannot write into our Received header`, async () => {
      const m = await spooled(plain, HOSTILE.replace('\t', leading));
      assert.equal(m.head.length, 1, m.head.join('\n'));
      assert.match(m.head[0]!, /^Received: from .* \(Postern\) with ESMTP id /);
      assert.ok(!m.head[0]!.includes('ceo@example.com'), m.head[0]);
      assert.equal(m.body, HOSTILE.replace('\t', leading));
    });
  }

  test('with a data hook: no client header fields, the body from the client\'s first line, the added field kept apart', async () => {
    const m = await spooled(hooked, HOSTILE);
    assert.match(m.reply, /^250 2\.0\.0 headers=0 body="\\t\(Authentica": queued as /);
    assert.deepEqual(m.head.map((f) => f.split(':')[0]), ['Received', 'X-Checked']);
    assert.equal(m.head[1], 'X-Checked: yes');
    assert.equal(m.body, HOSTILE);
  });

  test('an ordinary message is untouched: its header stays its header', async () => {
    const m = await spooled(plain, 'Subject: fine\r\n folded\r\n\r\nbody\r\n');
    assert.deepEqual(m.head.slice(1), ['Subject: fine folded']);
    assert.equal(m.body, 'body\r\n');
  });
});

describe('received-user', () => {
  // The Received header's "(Authenticated sender: …)" line stays within RFC 5322's 998 characters whatever the
  // name: a client's own AUTH username (up to 12 KB in one AUTH line) that an auth script accepts by name, or a script's
  // accept({ username }) of any length, wrote a line of that length, which the next hop breaks where it likes
  // (as long certificate names did before: see client-certificates.test.ts).
  let server: TestServer;
  before(async () => {
    server = await startTestServer({
      config: configYaml({ localDomains: ['example.com'], users: './users', listeners: [
        testListener('sub', { reverseDns: false, auth: { mechanisms: ['PLAIN'] } }),
      ] }),
      files: { users: '# none: the auth script decides\n' },
      scripts: { 'auth.ts': 'export default (ctx) => ctx.auth.password === "script-name" ? accept({ username: "s".repeat(5000) + "@example.com" })\n' +
        '  : ctx.auth.password === "script-nel" ? accept({ username: "dév\\u0085X-A: 1\\u009bx" }) : accept({ username: ctx.auth.username })' },
    });
  });
  after(() => server.stop());

  const plain = (user: string, password: string): string => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

  for (const [who, user, password] of [['the client', 'ü'.repeat(6000), 'pw'], ['the script', 'alice', 'script-name']] as const) {
    test(`a ${who === 'the client' ? 'client\'s 12 KB username' : 'script\'s 5 KB username'}: every header line within 998 characters`, async () => {
      const c = await SmtpTestClient.connect(server.port('sub'));
      await c.hello();
      assert.equal((await c.command(plain(user, password))).code, 235);
      const r = await c.sendMail('a@example.org', ['b@example.com']);
      assert.equal(r.code, 250, r.text);
      await c.quit();
      const message = (await server.runtime.spool.readMessage(/queued as (\S+)/.exec(r.text)![1]!)).toString('utf8');
      const head = message.slice(0, message.indexOf('\r\n\r\n'));
      for (const line of head.split('\r\n')) assert.ok(Buffer.byteLength(line) <= 998, `${Buffer.byteLength(line)} bytes: ${line.slice(0, 80)}…`);
      // Not an SMTPUTF8 message: the header is 7-bit, each ü a "?" (received-7bit.test.ts).
      assert.match(head, new RegExp(`\\(Authenticated sender: ${who === 'the client' ? '\\?' : 's'}{240}\\.\\.\\.\\)`));
    });
  }

  // An SMTPUTF8 message keeps the name's non-ASCII text, but not a character that a Unicode-aware reader takes for a
  // line break (NEL, U+2028, U+2029: Python's str.splitlines()) or another control: a client's AUTH name
  // `dév<U+2028>X-Spam-Flag: NO` that an auth script accepted put a field of the client's choosing, to such a reader,
  // in Postern's own Received header (smtp-server refuses C1 controls in a client's name; a script's name may hold them).
  for (const [who, password, user, shown] of [
    ['client', 'pw', 'dév\u2028X-Spam-Flag: NO\u2029X-B: 2', 'dév?x-spam-flag: no?x-b: 2'],
    ['script', 'script-nel', 'alice', 'dév?x-a: 1?x'],
  ] as const) {
    test(`an SMTPUTF8 message: NEL, U+2028, U+2029 and C1 controls of a ${who}'s username are "?" in the Received header`, async () => {
      const c = await SmtpTestClient.connect(server.port('sub'));
      await c.hello();
      const a = await c.command(plain(user, password));
      assert.equal(a.code, 235, a.text);
      assert.equal((await c.command('MAIL FROM:<a@example.org> SMTPUTF8')).code, 250);
      assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      const r = await c.command('Subject: s\r\n\r\nhi\r\n.');
      assert.equal(r.code, 250, r.text);
      await c.quit();
      const message = (await server.runtime.spool.readMessage(/queued as (\S+)/.exec(r.text)![1]!)).toString('utf8');
      const head = message.slice(0, message.indexOf('\r\n\r\n'));
      assert.ok(head.includes(`(Authenticated sender: ${shown})`), head);
      assert.doesNotMatch(head, /[\x80-\x9f\u2028\u2029]/);
    });
  }
});

describe('hop-limit', () => {
  // A message carrying 50 Received header fields (a mail loop, or a client that wrote them) was accepted with 250,
  // and the queue, counting Postern's own Received field as the 51st, bounced it as a loop: to the envelope sender,
  // which a spammer forges (backscatter). Now refused at the end of DATA with `554 5.4.6 Error: too many hops`, as
  // Postfix's cleanup does; one hop fewer is accepted and delivered. Real client (Python's smtplib), real next hop.
  const run = promisify(execFile);
  const pythonFound = spawnSync('python3', ['-c', 'import smtplib']).status === 0;
  const needsPython = { skip: pythonFound || process.env.POSTERN_REQUIRE_CLIENTS ? false : 'python3 not installed' };

  let server: TestServer;
  let sink: Sink;

  before(async () => {
    sink = await startSink();
    server = await startTestServer({
      config: `
localDomains: [example.com]
delivery: { route: { smarthost: { host: 127.0.0.1, port: ${sink.port} } }, tls: { mode: none }, scanIntervalMs: 200 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(async () => {
    await server.stop();
    await sink.close();
  });

  /** smtplib sends a message with `hops` Received fields (in mixed case, one folded) from a forged sender: the server's answer to its DATA. */
  async function sendWithHops(hops: number): Promise<string> {
    const py = `
import smtplib, sys
hops = ${hops}
lines = ''.join('%s: from relay%d.example by relay%d.example;\\r\\n\\tSun, 6 Dec 2026 00:00:00 +0000\\r\\n' % ('RECEIVED' if i % 2 else 'Received', i, i + 1) for i in range(hops))
msg = lines + 'Subject: hops %d\\r\\nX-Received-Note: not a Received field\\r\\n\\r\\nbody\\r\\n' % hops
s = smtplib.SMTP('127.0.0.1', ${server.port('mx')})
s.ehlo('client.example')
try:
    s.sendmail('forged-victim@innocent.example', ['alice@example.com'], msg)
    print('250')
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode())
s.quit()
`;
    return (await run('python3', ['-c', py])).stdout.trim();
  }

  test('smtplib: 50 Received fields are refused at the end of DATA (554 5.4.6), not accepted and bounced; 49 are accepted and delivered', needsPython, async () => {
    const mark = server.logs.length;
    assert.equal(await sendWithHops(50), '554 5.4.6 Error: too many hops');
    const line = server.logs.slice(mark).find((l) => l.decision === 'reject');
    assert.ok(line, 'a decision line');
    assert.equal(line.stage, 'END-OF-MESSAGE');
    assert.match(String(line.reason), /50 Received header fields/);
    assert.equal(server.logs.slice(mark).filter((l) => String(l.msg).includes('accepted from=')).length, 0, 'nothing spooled');

    assert.equal(await sendWithHops(49), '250');
    const [delivered] = await sink.waitFor(1, 60_000);
    assert.match(delivered!.data.toString('latin1'), /^Subject: hops 49\r$/m, 'delivered, not bounced as a loop');
    assert.deepEqual(delivered!.to, ['alice@example.com']);
  });

  test('postern try data answers such a message as the server does', async () => {
    const eml = join(server.dir, 'loop.eml');
    await writeFile(eml, `${'Received: from a by b\r\n'.repeat(50)}Subject: loop\r\n\r\nbody\r\n`);
    const r = await runCli(['try', 'data', '-c', join(server.dir, 'postern.yaml'), '--from', 'a@x.example', '--to', 'alice@example.com', '--message', eml]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /^< 554 5\.4\.6 Error: too many hops$/m);
  });
});

describe('envelope-canonical', () => {
  // One address is written one way before the relay rule, scripts, smtp-server's duplicate index and the spool
  // see it (engine/smtp/envelope-path.ts):
  // - a quoted local part that needs no quotes loses them: `"ceo"@x` and `"c\eo"@x` are ceo@x to the next hop, and
  //   a rcptto script refusing ceo@x let them through; one that needs its quotes is refused with 553 5.1.3;
  // - an IDN domain: smtp-server decoded A-labels to U-labels, so `user@xn--bcher-kva.example` from an ASCII client
  //   was refused as undeclared UTF-8 (553 5.6.7); an ASCII transaction now keeps the A-labels, an SMTPUTF8 one
  //   gets the U-labels of the same name, and the relay rule compares A-labels (localDomains either way);
  // - an A-label that decodes to a control character (`xn--a` is U+0080) is a syntax error, not an address;
  // - the bare postmaster with an IDN as first local domain is postmaster@<its A-labels>, not refused as UTF-8.
  const run = promisify(execFile);
  const listener = `
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`;
  let uLabels: TestServer; // localDomains as U-labels, a rcptto script that refuses ceo@
  let aLabels: TestServer; // localDomains as A-labels, no script

  before(async () => {
    uLabels = await startTestServer({
      config: `hostname: mx.example.net\nlocalDomains: [Bücher.example, example.com]\n${listener}`,
      scripts: {
        'rcptto.ts': 'export default (ctx) => ctx.address.localPart.toLowerCase() === "ceo" ? reject("no mail for the CEO", { code: 550 }) : ctx.address.domain === "open.example" ? accept() : undefined',
      },
    });
    aLabels = await startTestServer({ config: `hostname: mx.example.net\nlocalDomains: [xn--bcher-kva.example]\n${listener}` });
  });
  after(async () => { await uLabels?.stop(); await aLabels?.stop(); });

  async function session(server: TestServer, mailFrom = 'MAIL FROM:<a@sender.example>'): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    const r = await c.command(mailFrom);
    assert.equal(r.code, 250, r.text);
    return c;
  }

  async function spooled(server: TestServer, c: SmtpTestClient): Promise<{ sender: string; recipients: string[] }> {
    assert.equal((await c.command('DATA')).code, 354);
    const r = await c.command('Subject: x\r\n\r\nhi\r\n.');
    assert.equal(r.code, 250, r.text);
    const { envelope } = await server.runtime.spool.readForDelivery(/queued as (\S+)/.exec(r.text)![1]!);
    return { sender: envelope.sender, recipients: envelope.recipients.map((x) => x.address) };
  }

  test('quoted local parts that need no quotes are the unquoted address: the rcptto script sees ceo@ and refuses it', async () => {
    const c = await session(uLabels, 'MAIL FROM:<"alice"@sender.example>');
    for (const rcpt of ['<ceo@example.com>', '<"ceo"@example.com>', '<"c\\eo"@example.com>', '<"CEO"@example.com>']) {
      const r = await c.command(`RCPT TO:${rcpt}`);
      assert.equal(r.code, 550, `${rcpt}: ${r.text}`);
      assert.match(r.text, /no mail for the CEO/);
    }
    assert.equal((await c.command('RCPT TO:<"bob"@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<bob@example.com>')).code, 250); // the same recipient: replaces it
    assert.deepEqual(await spooled(uLabels, c), { sender: 'alice@sender.example', recipients: ['bob@example.com'] });
    await c.quit();
  });

  test('a quoted local part that needs its quotes is refused with 553 5.1.3, at MAIL FROM and RCPT TO', async () => {
    const c = await session(uLabels);
    for (const rcpt of ['"a b"@example.com', '"a@b"@example.com', '""@example.com', '"ceo."@example.com']) {
      const r = await c.command(`RCPT TO:<${rcpt}>`);
      assert.equal(r.code, 553, `${rcpt}: ${r.text}`);
      assert.match(r.text, /^553 5\.1\.3 Quoted local parts with spaces or special characters are not accepted$/);
    }
    await c.command('RSET');
    const mail = await c.command('MAIL FROM:<"john smith"@sender.example>');
    assert.equal(mail.code, 553, mail.text);
    await c.quit();
  });

  test('a local part that is neither a dot-atom nor quoted is a syntax error: a next hop would read ceo in several', async () => {
    const c = await session(uLabels);
    // RFC 5322 readers drop a comment, unescape a quoted-pair, join a quoted string to an atom, split at a comma.
    for (const rcpt of ['"ce"o@example.com', 'c"e"o@example.com', 'c\\eo@example.com', 'ceo(x)@example.com', 'x,ceo@example.com', 'c;eo@example.com', 'c[eo]@example.com']) {
      const r = await c.command(`RCPT TO:<${rcpt}>`);
      assert.equal(r.code, 501, `${rcpt}: ${r.text}`);
    }
    for (const rcpt of ["o'brien+tag@example.com", 'a.b-c_d=e/f{g}|h~i#j$k&l*m?n^o`pq@example.com']) {
      assert.equal((await c.command(`RCPT TO:<${rcpt}>`)).code, 250, rcpt);
    }
    await c.command('RSET');
    assert.equal((await c.command('MAIL FROM:<x(y)@sender.example>')).code, 501);
    await c.quit();
  });

  test('python smtplib: user@xn--… without SMTPUTF8 is a local recipient (localDomains in U-labels), spooled in A-labels', async () => {
    const py = `
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=60)
s.ehlo('client.example')
s.mail('sender@elsewhere.example')
for r in ('user@xn--bcher-kva.example', 'Postmaster'):
    c, m = s.rcpt(r); print(c, m.decode())
c, m = s.data(b'Subject: hi\\r\\n\\r\\nhello\\r\\n'); print(c, m.decode())
s.quit()
`;
    const { stdout } = await run('python3', ['-c', py, String(uLabels.port('mx'))]);
    const [rcpt, postmaster, data] = stdout.trim().split('\n');
    assert.match(rcpt!, /^250 /);
    assert.match(postmaster!, /^250 /);
    assert.match(data!, /^250 /);
    const { envelope, message } = await uLabels.runtime.spool.readForDelivery(/queued as (\S+)/.exec(data!)![1]!);
    assert.deepEqual(envelope.recipients.map((r) => r.address), ['user@xn--bcher-kva.example', 'postmaster@xn--bcher-kva.example']);
    const received = message.toString('latin1', 0, message.indexOf('\r\n\r\n'));
    // eslint-disable-next-line no-control-regex
    assert.doesNotMatch(received, /[^\x00-\x7f]/, 'the Received header of an ASCII transaction is ASCII');
  });

  test('an SMTPUTF8 transaction gets U-labels; the relay rule matches localDomains written as A-labels; one recipient however spelled', async () => {
    const c = await session(aLabels, 'MAIL FROM:<a@sender.example> SMTPUTF8');
    for (const rcpt of ['user@xn--bcher-kva.example', 'user@bücher.example', 'user@BÜCHER.example', 'user@XN--BCHER-KVA.example']) {
      const r = await c.command(`RCPT TO:<${rcpt}>`);
      assert.equal(r.code, 250, `${rcpt}: ${r.text}`);
    }
    assert.deepEqual((await spooled(aLabels, c)).recipients, ['user@bücher.example']);
    await c.quit();
  });

  test('an A-label that decodes to a control character is a syntax error; IDNA-mapped spellings are the plain name', async () => {
    const c = await session(uLabels, 'MAIL FROM:<a@sender.example> SMTPUTF8');
    const control = await c.command('RCPT TO:<u@xn--a.open.example>'); // U+0080.open.example
    assert.equal(control.code, 501, control.text);
    // A soft hyphen and fullwidth letters map to the plain name: the script's check for ceo@example.com holds.
    for (const rcpt of ['ceo@ex\u00adample.com', 'ceo@ＥＸＡＭＰＬＥ.com']) {
      const r = await c.command(`RCPT TO:<${rcpt}>`);
      assert.equal(r.code, 550, `${rcpt}: ${r.text}`);
    }
    assert.equal((await c.command('RCPT TO:<bob@ex\u00adample.com>')).code, 250);
    // A decomposed UTF-8 local part is the composed one (NFC): one recipient.
    assert.equal((await c.command('RCPT TO:<jos\u00e9@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<jose\u0301@example.com>')).code, 250);
    assert.deepEqual((await spooled(uLabels, c)).recipients, ['bob@example.com', 'jos\u00e9@example.com']);
    await c.quit();
  });

  // An invisible or bidi character in a local part made another address that reads as ceo@ (`ce<U+00AD>o@`, a tag
  // character, a zero-width space), or reverses what follows it (U+202E) in a log line, a queue listing or a bounce:
  // the rcptto script's check for ceo@ passed it, and a person or a lenient next hop takes it for ceo. Refused now
  // with a reply that says why; ZWNJ and ZWJ, which Persian, Indic scripts and emoji need, stay.
  test('a local part with a control, format, private-use or unassigned character is refused with 553 5.1.3', async () => {
    const c = await session(uLabels, 'MAIL FROM:<a@sender.example> SMTPUTF8');
    const refused = '553 5.1.3 Control, format or unassigned characters in an address are not accepted';
    // Default-ignorable characters of other categories too (PRECIS disallows them all): the Hangul fillers (letters
    // that draw nothing), the combining grapheme joiner, Khmer's inherent vowels, Mongolian's variation selectors, and
    // variation selectors after a character they do not vary, as IVS after a Han ideograph.
    // (In a session of their own: with the others they would reach limits.maxErrors.)
    const ignorable = ['\u3164', '\u115f', '\u1160', '\uffa0', '\u034f', '\u17b4', '\u180b', '\ufe0f', '\ufe00', '\u{e0100}'];
    const ownSession = await session(uLabels, 'MAIL FROM:<a@sender.example> SMTPUTF8');
    for (const [client, chars] of [[c, ['\u00ad', '\u200b', '\u2060', '\ufeff', '\u202e', '\u2066', '\u{e0041}', '\u0085', '\ue000', '\u0378', '\u180e']], [ownSession, ignorable]] as const) {
      for (const ch of chars) {
        const r = await client.command(`RCPT TO:<ce${ch}o@example.com>`);
        assert.equal(`${r.code} ${r.text.slice(4)}`, refused, `U+${ch.codePointAt(0)!.toString(16)}: ${r.text}`);
      }
    }
    await ownSession.quit();
    // ZWNJ in Persian, ZWJ in a Devanagari conjunct: real names, accepted; a soft hyphen in the domain is IDNA-mapped.
    // An emoji's presentation selector (U+FE0F after a pictograph, in a ZWJ sequence, a keycap) is part of what it draws.
    const emoji = ['\u2764\ufe0f@example.com', '\u{1f441}\ufe0f\u200d\u{1f5e8}\ufe0f@example.com', 'room1\ufe0f\u20e3@example.com'];
    for (const rcpt of ['\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645@example.com', '\u0915\u094d\u200d\u0937@example.com', 'bob@ex\u00adample.com', ...emoji]) {
      assert.equal((await c.command(`RCPT TO:<${rcpt}>`)).code, 250, rcpt);
    }
    await c.command('RSET');
    const mail = await c.command('MAIL FROM:<"ce\u202eo"@sender.example> SMTPUTF8');
    assert.equal(`${mail.code} ${mail.text.slice(4)}`, refused);
    await c.quit();
  });
});

describe('smtputf8-declared', () => {
  // A non-ASCII address is taken only in a transaction whose MAIL FROM declared SMTPUTF8 (RFC 6531 §3.4;
  // Postfix answers the same 553 5.6.7). Undeclared, it was accepted and spooled, then relayed as a UTF-8
  // envelope the client never announced, to next hops that may not speak SMTPUTF8 at all. With Python's
  // smtplib: declared (mail_options SMTPUTF8) it is accepted; a client that writes UTF-8 without declaring it
  // (smtplib with its command encoding switched to UTF-8) is refused at MAIL FROM and at RCPT TO.
  const run = promisify(execFile);
  let server: TestServer;

  before(async () => {
    server = await startTestServer({
      config: `
localDomains: [example.com, bücher.example]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(() => server.stop());

  test('python smtplib: UTF-8 addresses with SMTPUTF8 declared are accepted; undeclared, 553 5.6.7 at MAIL FROM and RCPT TO', async () => {
    const before = (await server.runtime.spool.list()).length;
    const py = `
import smtplib
s = smtplib.SMTP("127.0.0.1", ${server.port('mx')}, local_hostname="client.example")
s.ehlo()
assert s.has_extn("smtputf8")
# Declared: the whole transaction may use UTF-8 addresses.
s.sendmail("jürgen@bücher.example", ["renée@example.com"], "Subject: declared\\r\\n\\r\\nhi\\r\\n".encode(), mail_options=["SMTPUTF8"])
print("declared ok")
# Undeclared: a client that writes UTF-8 commands without the parameter.
s.command_encoding = "utf-8"
print("mail", s.docmd("MAIL", "FROM:<jürgen@bücher.example>"))
print("mail-ascii", s.docmd("MAIL", "FROM:<juergen@example.net>"))
print("rcpt", s.docmd("RCPT", "TO:<renée@example.com>"))
print("rcpt-ascii", s.docmd("RCPT", "TO:<rene@example.com>"))
s.quit()
`;
    const { stdout } = await run('python3', ['-c', py]);
    assert.match(stdout, /^declared ok$/m);
    assert.match(stdout, /^mail \(553, b'5\.6\.7 Must declare SMTPUTF8 to send unicode address'\)$/m);
    assert.match(stdout, /^mail-ascii \(250, /m);
    assert.match(stdout, /^rcpt \(553, b'5\.6\.7 Must declare SMTPUTF8 to send unicode address'\)$/m);
    assert.match(stdout, /^rcpt-ascii \(250, /m);
    assert.equal((await server.runtime.spool.list()).length, before + 1, 'only the declared message was spooled');
  });
});

describe('bare-postmaster', () => {
  // RFC 5321 §4.5.1: every SMTP server must accept mail for the bare `postmaster` (no domain, any case),
  // whatever the client may relay. As Postfix (postmaster@$myorigin), Postern rewrites it to
  // postmaster@<first of localDomains>, else postmaster@<hostname>: that is what the relay rule, a rcptto
  // script and the spool see. Real clients: swaks (RCPT stage) and python smtplib (a whole message, then
  // the spooled envelope is read back).
  const run = promisify(execFile);
  const swaksFound = spawnSync('sh', ['-c', 'command -v swaks']).status === 0;
  const needsSwaks = { skip: swaksFound || process.env.POSTERN_REQUIRE_CLIENTS ? false : 'swaks not installed' };

  const listener = `
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`;
  let local: TestServer; // localDomains, no scripts
  let bare: TestServer; // no localDomains (hostname), a rcptto script

  before(async () => {
    local = await startTestServer({ config: `hostname: mx.example.net\nlocalDomains: [Example.COM, other.example]\n${listener}` });
    bare = await startTestServer({
      config: `hostname: mx.example.net\n${listener}`,
      scripts: { 'rcptto.ts': 'export default (ctx) => ctx.address.localPart === "postmaster" ? accept({ text: `saw ${ctx.address.address} ${ctx.builtin.reason}` }) : undefined' },
    });
  });
  after(async () => { await local?.stop(); await bare?.stop(); });

  async function swaksRcpt(server: TestServer, to: string): Promise<{ code: number; out: string }> {
    const args = ['--server', '127.0.0.1', '--port', String(server.port('mx')), '--ehlo', 'client.example',
      '--from', 'sender@elsewhere.example', '--to', to, '--quit-after', 'RCPT'];
    return run('swaks', args).then((r) => ({ code: 0, out: r.stdout }), (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }));
  }

  /** python smtplib: MAIL, RCPT TO:<rcpt>, DATA; prints the RCPT reply and the DATA reply. */
  async function smtplibSend(server: TestServer, rcpt: string): Promise<{ rcpt: string; data: string }> {
    const py = `
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=60)
s.ehlo('client.example')
s.mail('sender@elsewhere.example')
c, m = s.rcpt(sys.argv[2]); print(c, m.decode())
c, m = s.data(b'Subject: hi\\r\\n\\r\\nhello\\r\\n'); print(c, m.decode())
s.quit()
`;
    const { stdout } = await run('python3', ['-c', py, String(server.port('mx')), rcpt]);
    const [rcptLine, dataLine] = stdout.trim().split('\n');
    return { rcpt: rcptLine!, data: dataLine! };
  }

  async function spooledRecipients(server: TestServer, dataReply: string): Promise<string[]> {
    const id = /queued as (\S+)/.exec(dataReply)?.[1];
    assert.ok(id, dataReply);
    const { envelope } = await server.runtime.spool.readForDelivery(id);
    return envelope.recipients.map((r) => r.address);
  }

  test('swaks: RCPT TO:<postmaster> and <PostMaster> are accepted on a listener with no relay rights; another domainless recipient is not', needsSwaks, async () => {
    for (const to of ['postmaster', 'PostMaster']) {
      const r = await swaksRcpt(local, to);
      assert.equal(r.code, 0, `accepted:\n${r.out}`);
    }
    const other = await swaksRcpt(local, 'victim');
    assert.notEqual(other.code, 0, other.out);
    const relay = await swaksRcpt(local, 'postmaster@elsewhere.example');
    assert.equal(relay.code, 24, `postmaster of another domain is still a relay:\n${relay.out}`);
    assert.match(relay.out, /554 5\.7\.1 <postmaster@elsewhere\.example>: Relay access denied/);
  });

  test('python smtplib: the bare postmaster is spooled as postmaster@<first local domain>', async () => {
    const r = await smtplibSend(local, 'Postmaster');
    assert.match(r.rcpt, /^250 /);
    assert.match(r.data, /^250 /);
    assert.deepEqual(await spooledRecipients(local, r.data), ['postmaster@example.com']);
  });

  test('python smtplib: without localDomains, postmaster@<hostname>; a rcptto script sees the rewritten address and decides', async () => {
    const r = await smtplibSend(bare, 'postmaster');
    assert.equal(r.rcpt, '250 2.1.5 saw postmaster@mx.example.net postmaster');
    assert.match(r.data, /^250 /);
    assert.deepEqual(await spooledRecipients(bare, r.data), ['postmaster@mx.example.net']);
  });

  test('a repeated <postmaster> (once bare, once written out) is one recipient', async () => {
    const py = `
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=60)
s.ehlo('client.example')
s.mail('sender@elsewhere.example')
print(s.rcpt('postmaster')[0], s.rcpt('postmaster@example.com')[0], s.rcpt('POSTMASTER')[0])
c, m = s.data(b'Subject: hi\\r\\n\\r\\nhello\\r\\n'); print(c, m.decode())
s.quit()
`;
    const { stdout } = await run('python3', ['-c', py, String(local.port('mx'))]);
    const [codes, data] = stdout.trim().split('\n');
    assert.equal(codes, '250 250 250');
    assert.deepEqual(await spooledRecipients(local, data!), ['postmaster@example.com']);
  });
});
