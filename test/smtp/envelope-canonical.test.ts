// One address is written one way before the relay rule, scripts, smtp-server's duplicate index and the spool
// see it (engine/smtp/envelope-path.ts):
// - a quoted local part that needs no quotes loses them: `"ceo"@x` and `"c\eo"@x` are ceo@x to the next hop, and
//   a rcptto script refusing ceo@x let them through; one that needs its quotes is refused with 553 5.1.3;
// - an IDN domain: smtp-server decoded A-labels to U-labels, so `user@xn--bcher-kva.example` from an ASCII client
//   was refused as undeclared UTF-8 (553 5.6.7); an ASCII transaction now keeps the A-labels, an SMTPUTF8 one
//   gets the U-labels of the same name, and the relay rule compares A-labels (localDomains either way);
// - an A-label that decodes to a control character (`xn--a` is U+0080) is a syntax error, not an address;
// - the bare postmaster with an IDN as first local domain is postmaster@<its A-labels>, not refused as UTF-8.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

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
