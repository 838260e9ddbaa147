// A message's header section and body as the server reads, edits and passes them on: where the header section ends,
// field names, bare CR, folded and edited fields, line ends and dot-stuffing. One file for what were several (one
// test process and one load of the engine instead of one each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { HeaderReader } from '../../engine/smtp/header-reader.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { freePort, needsPostfix, startPostfix, startSmtpSink } from '../helpers/postfix.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { PLAIN_MX_CONFIG, startTestServer, type TestServer } from '../helpers/postern.ts';

describe('header-section-end', () => {
  // Where the header section ends. A line that is neither a field (`name:`, the name printable ASCII without
  // spaces) nor a folded line ends it, as Postfix (cleanup's is_header()) and Exim read a message: that line is the
  // first of the body, and they write the empty line the client left out. Postern read such a section on to the
  // next empty line (none: the whole message), so the data hook's ctx.message.text() was "" and a content check
  // passed `Subject: x<CRLF>Buy viagra now<CRLF>`, while a real Postfix next hop delivered "Buy viagra now" as the
  // body. Now the hook reads the body the next hop delivers, and the spool holds the empty line Postfix would write.
  // And a NUL in a field, where a C next hop ends the field and the hook saw all of it, is refused.
  // [message, where its header section ends, whether an empty line ends it, fields]
  const SECTIONS: Array<[string, number, boolean, number]> = [
    ['Subject: a\r\nBuy viagra now\r\nmore\r\n', 12, false, 1],
    ['Subject: a\r\nX-B: b\r\n folded\r\n\r\nbody\r\n', 29, true, 2],
    ['Subject: a\r\nBad Name: x\r\n\r\nbody\r\n', 12, false, 1], // a space inside a name: no field
    ['Subject : a\r\nX-B\t: b\r\nNoColon\r\nX-C: c\r\n', 22, false, 2],
    ['Subject: a\n<html>\n', 11, false, 1],
    ['just body\r\n', 0, false, 0],
    [':no name\r\n', 0, false, 0],
    ['Subject: a\r\nX-Caf\u00e9: 8-bit name\r\n', 12, false, 1],
    ['Subject: a\r\nX-A\u0001: control\r\n', 12, false, 1],
    ['A: 1\r\nB: 2\r\n', -1, false, 2], // all fields, no empty line: all header section
    ['A: 1\nB: 2\n\nbody\n', 10, true, 2],
  ];

  for (const [message, end, emptyLine, fields] of SECTIONS) {
    test(`the header section of ${JSON.stringify(message.slice(0, 30))} ends at ${end}${emptyLine ? ', an empty line' : ''}, at every split`, () => {
      const bytes = Buffer.from(message);
      for (let a = 0; a <= bytes.length; a++) {
        for (let b = a; b <= bytes.length; b++) {
          const r = new HeaderReader(1 << 20);
          for (const piece of [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)]) assert.equal(r.push(piece), true);
          const at = `split at ${a}, ${b}`;
          assert.equal(r.sectionBytes, end, at);
          assert.equal(r.noEmptyLine, end >= 0 && !emptyLine, at);
          assert.equal(r.fields, fields, at);
          assert.equal(r.headers().length, fields, at);
        }
      }
    });
  }

  // A NUL in a field's value: refused (a real Postfix ends the field there: `From: ceo@example.com<NUL>@evil.test` was
  // delivered as `From: ceo@example.com`, while the data hook saw the domain evil.test). A NUL that starts a line or is in
  // a field name makes the line no field: body, where a NUL is taken (Postfix keeps it too).
  const NULS: Array<[string, boolean, number]> = [
    ['From: <ceo@example.com\0@evil.test>\r\n\r\nbody\r\n', true, -1],
    ['Subject: a\r\nX-B: b\r\n fold\0ed\r\n\r\n', true, -1],
    ['Subject: a\r\n\0X: y\r\n', false, 12],
    ['Subject: a\r\nX\0: y\r\n', false, 12],
    ['Subject: a\r\n\r\nbody \0 NUL\r\n', false, 12],
  ];

  for (const [message, refused, end] of NULS) {
    test(`a NUL in ${JSON.stringify(message.slice(0, 28))}: ${refused ? 'refused' : `taken, the section ends at ${end}`}, at every split`, () => {
      const bytes = Buffer.from(message);
      for (let a = 0; a <= bytes.length; a++) {
        const r = new HeaderReader(1 << 20);
        const taken = [r.push(bytes.subarray(0, a)), r.push(bytes.subarray(a))];
        assert.equal(r.nul, refused, `split at ${a}`);
        assert.equal(taken.includes(false), refused, `split at ${a}`);
        if (!refused) assert.equal(r.sectionBytes, end, `split at ${a}`);
      }
    });
  }

  /** The data hook refuses a message whose body (as it reads it) says "viagra". */
  const CONTENT_CHECK = {
    'data.ts': `export default async (ctx) => {
  const body = await ctx.message.text();
  return /viagra/i.test(body) ? reject('content check: ' + JSON.stringify(body)) : accept({ text: 'body ' + JSON.stringify(body) });
};`,
  };

  const HIDDEN = [
    'Subject: no empty line\r\nBuy viagra now\r\n',
    'Subject: html\r\n<html>viagra</html>\r\n',
    'Subject: bad name\r\nBad Name: viagra\r\n',
    'Buy viagra now\r\n',
  ];

  let sink: Sink;
  let s: DeliveryServer;

  before(async () => {
    sink = await startSink();
    s = await startDeliveryServer({
      scripts: CONTENT_CHECK,
      config: configYaml({ localDomains: ['example.com'], listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }) }),
    });
  });
  after(async () => {
    await s?.stop();
    await sink?.close();
  });

  test('the data hook reads the body of a message without the empty line; the spool writes the empty line before it', async () => {
    const c = await SmtpTestClient.connect(s.port());
    await c.hello();
    for (const message of HIDDEN) {
      const r = await c.sendMail('a@example.org', ['b@example.com'], message);
      assert.equal(r.code, 550, `${JSON.stringify(message)}: ${r.text}`);
    }
    const nul = await c.sendMail('a@example.org', ['b@example.com'], 'From: <ceo@example.com\0@evil.test>\r\nSubject: hi\r\n\r\nbody\r\n');
    assert.match(nul.text, /^554 5\.6\.0 Message header section contains a NUL character/);
    const r = await c.sendMail('a@example.org', ['b@example.com'], 'Subject: fine\r\nX-A: 1\r\nHello there\r\n more\r\n');
    assert.match(r.text, /^250 .*body "Hello there\\r\\n more\\r\\n"/);
    await c.quit();
    const [delivered] = await sink.waitFor(1);
    const text = delivered!.data.toString('latin1');
    assert.match(text, /\r\nSubject: fine\r\nX-A: 1\r\n\r\nHello there\r\n more\r\n$/, text);
  });

  test('a header edit on such a message: the edited section, then the empty line, then the body', async () => {
    const t = await startDeliveryServer({
      scripts: { 'data.ts': `export default () => accept({ headers: [{ op: 'add', name: 'X-Checked', value: 'yes' }, { op: 'remove', name: 'X-A' }] });` },
      config: configYaml({ localDomains: ['example.com'], listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }) }),
    });
    try {
      const id = await t.send('a@example.org', ['b@example.com'], 'X-A: 1\r\nSubject: edited\r\nno field here: x\r\n');
      const { message } = await t.runtime.spool.readForDelivery(id);
      assert.match(message.toString('latin1'), /\r\nX-Checked: yes\r\nSubject: edited\r\n\r\nno field here: x\r\n$/);
    } finally {
      await t.stop();
    }
  });

  test('through a real Postfix next hop: the body it delivers is the body the data hook read', needsPostfix(), async (t) => {
    const smtpSink = await startSmtpSink();
    t.after(() => smtpSink.stop());
    const smtpdPort = await freePort();
    const pf = await startPostfix('header-end', {
      relayhost: `[127.0.0.1]:${smtpSink.port}`, smtp_tls_security_level: 'none', smtpd_relay_restrictions: 'permit_mynetworks, reject',
    }, [`127.0.0.1:${smtpdPort} inet n - n - - smtpd`]);
    t.after(() => pf.stop());
    const p = await startDeliveryServer({
      scripts: CONTENT_CHECK,
      config: configYaml({ localDomains: ['example.com'], listeners: [testListener('in')], delivery: smarthostDelivery(smtpdPort, { retrySchedule: [3600] }) }),
    });
    t.after(() => p.stop());
    const c = await SmtpTestClient.connect(p.port());
    await c.hello();
    const bodies: string[] = [];
    for (const subject of ['no empty line', 'bad name', 'html']) {
      const message = { 'no empty line': 'Subject: no empty line\r\nHello there\r\n', 'bad name': 'Subject: bad name\r\nBad Name: x\r\n', html: 'Subject: html\r\n<p>hi</p>\r\n' }[subject]!;
      const r = await c.sendMail('a@example.org', ['b@example.com'], message);
      assert.equal(r.code, 250, r.text);
      bodies.push(JSON.parse(/body (".*"): queued as/.exec(r.text)![1]!) as string);
    }
    await c.quit();
    for (const [i, subject] of ['no empty line', 'bad name', 'html'].entries()) {
      const dumped = await smtpSink.waitFor(new RegExp(`Subject: ${subject}\\n`), 60_000);
      // smtp-sink writes LF line ends; the body is what follows the first empty line.
      const delivered = dumped.slice(dumped.indexOf('\n\n') + 2);
      assert.equal(delivered.replace(/\n+$/, '\n'), bodies[i]!.replace(/\r\n/g, '\n'), `${subject}: ${dumped}`);
    }
  });
});

describe('header-bare-cr', () => {
  // A bare CR (a CR not followed by LF) in the header section: the next hop reads it as a line end (delivery sends
  // every bare CR as CRLF, as nodemailer does), while ctx.data.headers and the data hook's header edits split lines
  // at LF only. `Subject: a<CR>X-Trusted: yes` was one field to the script — its `remove` of X-Trusted missed it —
  // and two once relayed. Such a message is refused after its dot (554 5.6.0, as sendmail does), nothing kept; a
  // bare CR in the body is no line of the header section and is taken. The reader decides alike at every split.
  const CASES: Array<[string, boolean]> = [
    ['Subject: a\rX-Trusted: yes\r\n\r\nbody\r\n', true],
    ['X: a\r\r\nFrom: hidden\r\n\r\nbody\r\n', true], // CR CR LF: an empty line to the next hop
    ['A: 1\r\n\rB: lone CR at a line start\r\n\r\nbody', true],
    ['A: 1\r\nB: 2\n\r\nbody\rwith bare CR\r\n', false],
    ['A: 1\nB: 2\n\nbody\r\r\n', false],
    ['Subject: plain\r\n folded\r\n\r\n\r\n', false],
  ];

  for (const [section, bare] of CASES) {
    test(`bare CR in ${JSON.stringify(section.slice(0, 30))}: ${bare} at every split`, () => {
      const bytes = Buffer.from(section);
      for (let a = 0; a <= bytes.length; a++) {
        for (let b = a; b <= bytes.length; b++) {
          const r = new HeaderReader(1 << 20);
          let refused = false;
          for (const piece of [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)]) refused = !r.push(piece) || refused;
          assert.equal(r.bareCr, bare, `split at ${a}, ${b}`);
          assert.equal(refused, bare, `push() refuses: split at ${a}, ${b}`);
        }
      }
    });
  }

  test('a CR that ends a chunk is decided by the next one', () => {
    const r = new HeaderReader(1 << 20);
    assert.equal(r.push(Buffer.from('A: 1\r')), true);
    assert.equal(r.push(Buffer.from('\nB: 2\r')), true);
    assert.equal(r.push(Buffer.from('C: 3\r\n\r\n')), false);
    assert.equal(r.bareCr, true);
  });

  let server: TestServer;

  before(async () => {
    server = await startTestServer({
      config: PLAIN_MX_CONFIG,
      // The script strips what clients may not set; the spool must never hold a client's X-Trusted.
      scripts: { 'data.ts': 'export default () => accept({ headers: [{ op: "remove", name: "X-Trusted" }] });' },
    });
  });
  after(() => server?.stop());

  async function send(c: SmtpTestClient, message: string): Promise<{ code: number; text: string }> {
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    c.socket.write(`${message}.\r\n`);
    return c.read(60_000);
  }

  test('over SMTP: a bare CR in the header section is refused after the dot (554 5.6.0), nothing spooled; the session goes on', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    for (const message of ['Subject: a\rX-Trusted: yes\r\n\r\nbody\r\n', 'X: a\r\r\nX-Trusted: yes\r\n\r\nbody\r\n']) {
      const r = await send(c, message);
      assert.equal(r.code, 554, r.text);
      assert.match(r.text, /^554 5\.6\.0 Message header section contains a bare CR/);
    }
    // A bare CR in the body is taken as it is.
    const ok = await send(c, 'Subject: fine\r\nX-Trusted: yes\r\n\r\nbody\rX-Trusted: body text\r\n');
    assert.equal(ok.code, 250, ok.text);
    const id = /queued as (\S+)/.exec(ok.text)![1]!;
    const { message } = await server.runtime.spool.readForDelivery(id);
    const text = message.toString('latin1');
    assert.doesNotMatch(text.slice(0, text.indexOf('\r\n\r\n')), /X-Trusted/i, 'the client\'s header was removed');
    await c.quit();
    assert.equal((await readdir(server.runtime.spool.incomingDir)).length, 0, 'nothing left in incoming/');
    const refusals = server.logs.filter((l) => l.decision === 'reject' && l.code === 554);
    assert.equal(refusals.length, 2);
    assert.match(String(refusals[0]!.reason), /bare CR/);
  });
});

describe('header-field-names', () => {
  // The data hook's view of field names (ctx.data.headers) and its header edits find a field's name by one rule:
  // the text before the colon, less the spaces and tabs around it (RFC 5322 obs-optional). The view trimmed with
  // String.prototype.trim(), which also takes U+3000, U+00A0, a BOM or a vertical tab off, while edits decoded
  // the name as latin1: `X-Trusted<U+3000>: yes` was X-Trusted to the script, whose `remove` of X-Trusted then
  // left it in the message it accepted. Now the script sees the field as it is named, and whatever it sees as
  // X-Trusted its edit removes.
  let server: TestServer;

  before(async () => {
    server = await startTestServer({
      config: PLAIN_MX_CONFIG,
      scripts: {
        'data.ts': `export default (ctx) => {
        const seen = ctx.data.headers.filter(([n]) => n.toLowerCase() === 'x-trusted').map(([, v]) => v);
        return accept({ text: 'saw ' + JSON.stringify(seen), headers: [{ op: 'remove', name: 'X-Trusted' }] });
      };`,
      },
    });
  });
  after(() => server?.stop());

  test('what the data hook sees as X-Trusted its remove edit removes; names with other spaces are not X-Trusted', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    const fields = [
      'X-Trusted : space', 'X-Trusted\t: tab', 'X-Trusted\u3000: ideographic', 'X-Trusted\u00a0: nbsp',
      '\ufeffX-Trusted: bom', '\u000bX-Trusted: vt', 'X-Trusted\u000c: ff',
    ];
    c.socket.write(`${fields.join('\r\n')}\r\nSubject: names\r\n\r\nbody\r\n.\r\n`);
    const r = await c.read(60_000);
    assert.equal(r.code, 250, r.text);
    assert.match(r.text, /saw \["space","tab"\]/);
    const { message } = await server.runtime.spool.readForDelivery(/queued as (\S+)/.exec(r.text)![1]!);
    // The spooled header section, our Received header first: no field the hook's view names X-Trusted is left.
    const reader = new HeaderReader(1 << 20);
    reader.push(message);
    const left = reader.headers().filter(([n]) => n.toLowerCase() === 'x-trusted');
    assert.deepEqual(left, []);
    const text = message.toString('utf8');
    for (const kept of ['ideographic', 'nbsp', 'bom', 'vt', 'ff']) assert.ok(text.includes(`: ${kept}\r\n`), `${kept} kept as its own field`);
    assert.ok(!text.includes(': space') && !text.includes(': tab'));
    await c.quit();
  });

  test('a name with a long run of blanks inside (a section that starts with a folded line): found in linear time', () => {
    // The trim was /^[ \t]+|[ \t]+$/g, whose `[ \t]+$` ran from each blank of a run to its end: the run's square (40 s
    // for 200,000 blanks here). The intake and `postern try` never hand the reader such a section (a first line that
    // starts with a blank makes the message all body there): a guard for the next caller of HeaderReader or fieldName.
    const name = `a${' '.repeat(300_000)}b`;
    const reader = new HeaderReader(1 << 30);
    reader.push(Buffer.from(` ${name}\t: x\r\nSubject: y\r\n\r\nbody\r\n`));
    const start = process.cpuUsage();
    const fields = reader.headers();
    const used = process.cpuUsage(start);
    const ms = (used.user + used.system) / 1000;
    assert.ok(ms < 5000, `${ms} ms of CPU`);
    assert.deepEqual(fields, [[name, 'x'], ['Subject', 'y']]);
  });
});

describe('header-edit-separators', () => {
  // Header edit values with Unicode line separators: NEL (U+0085), LINE SEPARATOR (U+2028), PARAGRAPH
  // SEPARATOR (U+2029) and the other C1 controls are no CR or LF byte, but readers that split lines the
  // Unicode way (Python's str.splitlines(), which its email parser long used, and others) break the field
  // there: the rest becomes a field of the script's choosing, or the body. They fail closed as CR and LF do,
  // while other non-ASCII text (RFC 6532) is still written. Real server and spool.
  let server: TestServer;

  before(async () => {
    server = await startTestServer({
      config: 'localDomains: [example.com]\nlisteners:\n  - name: mx\n    listen: 127.0.0.1:0\n    limits: { greetingDelayMs: 0 }\n',
      // The value comes from the message's X-Value field, code points written as \uXXXX.
      scripts: { 'data.ts': `export default (ctx) => {
  const raw = (ctx.data.headers.find(([n]) => n === 'X-Value') ?? [])[1] ?? '';
  const value = raw.replace(/\\\\u([0-9a-f]{4})/g, (_, h) => String.fromCharCode(parseInt(h, 16)));
  return accept({ headers: [{ op: 'add', name: 'X-Note', value }] });
};` },
    });
  });
  after(() => server.stop());

  async function send(value: string): Promise<{ code: number; text: string; id: string | null }> {
    const c = await SmtpTestClient.connect(server.port('mx'));
    try {
      await c.hello();
      const r = await c.sendMail('a@example.org', ['b@example.com'], `X-Value: ${value}\r\nSubject: s\r\n\r\nbody\r\n`);
      return { code: r.code, text: r.text, id: /queued as ([0-9a-z]+)/.exec(r.text)?.[1] ?? null };
    } finally {
      await c.quit();
    }
  }

  for (const [name, cp] of [['NEL', '0085'], ['LINE SEPARATOR', '2028'], ['PARAGRAPH SEPARATOR', '2029'], ['C1 CSI', '009b'], ['C1 PAD', '0080']]) {
    test(`a value with ${name} (U+${cp.toUpperCase()}) fails closed, nothing spooled`, async () => {
      const before = (await server.runtime.spool.list()).length;
      const r = await send(`ok\\u${cp}Bcc: victim@example.net`);
      assert.equal(r.text, '451 4.3.0 Temporary policy failure, try again later');
      assert.equal((await server.runtime.spool.list()).length, before);
    });
  }

  test('other non-ASCII text is written as UTF-8', async () => {
    const r = await send('caf\\u00e9 \\u2713 \\u00a0end');
    assert.equal(r.code, 250, r.text);
    const text = (await server.runtime.spool.readMessage(r.id!)).toString('utf8');
    assert.match(text, /\r\nX-Note: café ✓ \u00a0end\r\n/);
  });
});

describe('header-edits', () => {
  // The data hook's header edits and body reads, through a real server and its spool: what is spooled is the
  // edited message (our Received header first), the body is read back only on demand, and every malformed
  // edit fails closed with 451 4.3.0 and spools nothing.
  let server: TestServer;

  const DATA_SCRIPT = `
export default async (ctx) => {
  const subject = (ctx.data.headers.find(([n]) => n.toLowerCase() === 'subject') ?? [])[1] ?? '';
  switch (subject) {
    case 'edit': return accept({ headers: [
      { op: 'remove', name: 'Received' },
      { op: 'remove', name: 'x-originating-ip' },
      { op: 'add', name: 'X-Postern-Client-Cert', value: 'none' },
      { op: 'add', name: 'Authentication-Results', value: 'mx.example; auth=pass smtp.auth=someone' },
      { op: 'set', name: 'Subject', value: 'edited ✓' },
      { op: 'set', name: 'X-New', value: 'v' },
    ] });
    case 'literal': return { verdict: 'accept', headers: [{ op: 'set', name: 'X-Literal', value: 'yes' }] };
    case 'body': {
      const ten = await ctx.message.text(10);
      const all = await ctx.message.text();
      return accept({ text: 'body ' + JSON.stringify(ten) + ' ' + all.length + ' ' + all.slice(-6, -2) });
    }
    case 'body-size': {
      const t = await ctx.message.text(1048576);
      return accept({ text: 'read ' + t.length + ' ' + JSON.stringify(t.slice(0, 5)), headers: [{ op: 'add', name: 'X-Big', value: 'yes' }] });
    }
    case 'body-too-much': await ctx.message.text(1048577); return accept();
    case 'inject': return accept({ headers: [{ op: 'add', name: 'X-A', value: 'a\\r\\nBcc: victim@example.net' }] });
    case 'lf': return accept({ headers: [{ op: 'add', name: 'X-A', value: 'a\\nb' }] });
    case 'eight-bit-name': return accept({ headers: [{ op: 'add', name: 'X-Ü', value: 'a' }] });
    case 'colon-name': return accept({ headers: [{ op: 'add', name: 'X-A:b', value: 'a' }] });
    case 'long': return accept({ headers: [{ op: 'add', name: 'X-Long', value: 'x'.repeat(991) }] });
    case 'unknown-op': return accept({ headers: [{ op: 'prepend', name: 'X-A', value: 'a' }] });
    case 'extra-key': return accept({ headers: [{ op: 'remove', name: 'X-A', value: 'a' }] });
    case 'too-many': return accept({ headers: Array.from({ length: 65 }, () => ({ op: 'remove', name: 'X-A' })) });
    case 'defer-edits': return { verdict: 'defer', headers: [{ op: 'remove', name: 'X-A' }] };
    default: return undefined;
  }
};`;

  before(async () => {
    server = await startTestServer({
      config: PLAIN_MX_CONFIG,
      scripts: {
        'data.ts': DATA_SCRIPT,
        'mailfrom.ts': `export default (ctx) => ctx.address.localPart === 'edits' ? accept({ headers: [{ op: 'remove', name: 'X-A' }] }) : undefined;`,
      },
    });
  });
  after(() => server.stop());

  async function send(body: string): Promise<{ code: number; text: string; id: string | null }> {
    const c = await SmtpTestClient.connect(server.port('mx'));
    try {
      await c.hello();
      const r = await c.sendMail('a@example.com', ['b@example.com'], body);
      return { code: r.code, text: r.text, id: /queued as ([0-9a-z]+)/.exec(r.text)?.[1] ?? null };
    } finally {
      await c.quit();
    }
  }

  const CLIENT_HEADER = [
    'Received: from laptop (laptop.lan [192.168.1.20])\r\n\tby client.example with ESMTP; Mon, 1 Jan 2024 00:00:00 +0000',
    'X-Originating-IP: [192.168.1.20]',
    'From: Someone <a@example.com>',
    'Subject: edit',
    'X-Folded: first part\r\n  second part',
    'received: from second-hop (lowercase name)',
    'To: b@example.com',
  ].join('\r\n') + '\r\n';

  test('accept with header edits: the spooled message is the edited one, our Received header first, untouched fields byte for byte', async () => {
    const body = 'line one\r\nline two\r\n';
    const r = await send(CLIENT_HEADER + '\r\n' + body);
    assert.equal(r.code, 250, r.text);
    const text = (await server.runtime.spool.readMessage(r.id!)).toString('utf8');
    const [head, ...rest] = text.split('\r\n\r\n');
    const ours = /^Received: from client\.example [^]*?\(Postern\) with ESMTP id [0-9a-z]+\r\n\tfor <b@example\.com>;\r\n\t[^\r\n]+\r\n/.exec(head + '\r\n');
    assert.ok(ours, `our Received header first:\n${head}`);
    assert.equal((head + '\r\n').slice(ours[0].length), [
      'X-Postern-Client-Cert: none',
      'Authentication-Results: mx.example; auth=pass smtp.auth=someone',
      'X-New: v',
      'From: Someone <a@example.com>',
      'Subject: edited ✓',
      'X-Folded: first part\r\n  second part',
      'To: b@example.com',
    ].join('\r\n') + '\r\n');
    assert.equal(rest.join('\r\n\r\n'), body);
    // The envelope's size is the edited message's, and delivery's integrity check passes.
    const { envelope, message } = await server.runtime.spool.readForDelivery(r.id!);
    assert.equal(envelope.size, message.length);
  });

  test('a verdict literal with headers is applied too', async () => {
    const r = await send('Subject: literal\r\nX-Literal: no\r\n\r\nhi\r\n');
    assert.equal(r.code, 250, r.text);
    const text = (await server.runtime.spool.readMessage(r.id!)).toString();
    assert.match(text, /\r\nSubject: literal\r\nX-Literal: yes\r\n\r\nhi\r\n$/);
  });

  test('ctx.message.text(): the body, capped at maxBytes, 64 KiB by default', async () => {
    const body = 'abcdefghijklmnop\r\n' + 'z'.repeat(100_000) + '\r\nend!\r\n';
    const r = await send('Subject: body\r\n\r\n' + body);
    assert.equal(r.code, 250, r.text);
    assert.equal(r.text, `250 2.0.0 body "abcdefghij" 65536 zzzz: queued as ${r.id}`);
    const short = await send('Subject: body\r\n\r\nshort\r\nend!\r\n');
    assert.equal(short.text, `250 2.0.0 body "short\\r\\nend" 13 end!: queued as ${short.id}`);
  });

  test('a message over 1 MiB (a spool file of its own): the body reads from the file, the edit rewrites it, the hash holds', async () => {
    const line = 'y'.repeat(998) + '\r\n';
    const body = 'START' + line + line.repeat(1500); // 1.5 MB
    const r = await send('Subject: body-size\r\nX-Keep: 1\r\n\r\n' + body);
    assert.equal(r.code, 250, r.text);
    assert.equal(r.text, `250 2.0.0 read 1048576 "START": queued as ${r.id}`);
    const { envelope, message } = await server.runtime.spool.readForDelivery(r.id!); // checks the SHA-256
    assert.equal(envelope.size, message.length);
    const text = message.toString();
    assert.match(text, /\(Postern\)[^]*?\r\nX-Big: yes\r\nSubject: body-size\r\nX-Keep: 1\r\n\r\nSTARTy/);
    assert.ok(text.endsWith('\r\n\r\n' + body), 'body intact');
    assert.deepEqual(await server.runtime.spool.list().then((ids) => ids.includes(r.id!)), true);
  });

  for (const [subject, why] of [
    ['inject', 'CR LF in a value'], ['lf', 'LF in a value'], ['eight-bit-name', '8-bit name'], ['colon-name', 'a colon in a name'],
    ['long', 'a field longer than 998 bytes'], ['unknown-op', 'an unknown op'], ['extra-key', 'a value on remove'],
    ['too-many', '65 edits'], ['defer-edits', 'edits on a defer'], ['body-too-much', 'text() over 1 MiB'],
  ]) {
    test(`fails closed with 451 4.3.0, nothing spooled: ${why}`, async () => {
      const before = (await server.runtime.spool.list()).length;
      const r = await send(`Subject: ${subject}\r\n\r\nbody\r\n`);
      assert.equal(r.text, '451 4.3.0 Temporary policy failure, try again later');
      assert.equal((await server.runtime.spool.list()).length, before);
    });
  }

  test('a message that is all header section (no empty line) is edited too', async () => {
    const r = await send('Subject: literal\r\nX-Literal: no');
    assert.equal(r.code, 250, r.text);
    const text = (await server.runtime.spool.readMessage(r.id!)).toString();
    assert.match(text, /\r\nSubject: literal\r\nX-Literal: yes\r\n$/);
  });

  test('header edits anywhere but the data hook fail closed: 451 4.3.0 at MAIL FROM', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<edits@example.com>')).text, '451 4.3.0 Temporary policy failure, try again later');
    await c.quit();
    assert.ok(server.logs.some((l) => String(l.msg).includes('headers: only a data hook can edit the message, not mailfrom')));
  });

  test('on an isolate thread (sandbox.fastPathMs: 0) the body reads and the edits apply the same', async () => {
    const threaded = await startTestServer({
      config: `
localDomains: [example.com]
sandbox: { fastPathMs: 0 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
`,
      scripts: { 'data.ts': DATA_SCRIPT },
    });
    try {
      const c = await SmtpTestClient.connect(threaded.port('mx'));
      await c.hello();
      const body = await c.sendMail('a@example.com', ['b@example.com'], 'Subject: body\r\n\r\nshort\r\nend!\r\n');
      assert.match(body.text, /^250 2\.0\.0 body "short\\r\\nend" 13 end!: queued as /);
      const edited = await c.sendMail('a@example.com', ['b@example.com'], 'Subject: literal\r\nX-Literal: no\r\n\r\nhi\r\n');
      await c.quit();
      const id = /queued as (\w+)/.exec(edited.text)![1]!;
      assert.match((await threaded.runtime.spool.readMessage(id)).toString(), /\r\nSubject: literal\r\nX-Literal: yes\r\n\r\nhi\r\n$/);
    } finally {
      await threaded.stop();
    }
  });
});

describe('header-reader-fields', () => {
  // HeaderReader's field count (limits.maxHeaderFields) is decided byte by byte as the message streams past: the
  // same count whatever the chunking, every split point of sections with folded lines, mixed CRLF and LF, and a
  // line that starts with a lone CR included, and always what the data hook is given (headers()).
  const SECTIONS = [
    'Subject: a\r\nX-B: b\r\n folded\r\n\tagain\r\nX-C: c\r\n\r\nbody\r\nNot-A: field\r\n',
    'Subject: a\nX-B: b\n folded\nX-C: c\n\nbody\n',
    'A: 1\r\n\rB: lone CR\r\nC: 3\n\r\nbody',
    'A: 1\r\nB: 2\r\n', // no empty line: all header section
    '\r\nbody only\r\nX: y\r\n',
  ];

  for (const section of SECTIONS) {
    test(`fields of ${JSON.stringify(section.slice(0, 24))}… are counted alike at every split`, () => {
      const bytes = Buffer.from(section);
      const whole = new HeaderReader(1 << 20);
      whole.push(bytes); // false for the lone CR's section (bareCr): it is still read to its end
      assert.equal(whole.tooLarge, false);
      const expected = whole.headers().length;
      assert.equal(whole.fields, expected);
      for (let a = 0; a <= bytes.length; a++) {
        for (let b = a; b <= bytes.length; b++) {
          const r = new HeaderReader(1 << 20);
          for (const piece of [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)]) r.push(piece);
          assert.equal(r.fields, expected, `split at ${a}, ${b}`);
          assert.equal(r.sectionBytes, whole.sectionBytes, `split at ${a}, ${b}`);
        }
        const byByte = new HeaderReader(1 << 20);
        for (const byte of bytes) byByte.push(Buffer.from([byte]));
        assert.equal(byByte.fields, expected, 'one byte at a time');
      }
    });
  }

  test('one field over maxFields refuses the section; exactly maxFields does not', () => {
    const section = Buffer.from('A: 1\r\nB: 2\r\n folded\r\nC: 3\r\n\r\n');
    const atLimit = new HeaderReader(1 << 20, 3);
    assert.equal(atLimit.push(section), true);
    assert.equal(atLimit.tooManyFields, false);
    const over = new HeaderReader(1 << 20, 2);
    assert.equal(over.push(section), false);
    assert.equal(over.tooManyFields, true);
    assert.equal(over.tooLarge, true);
    assert.deepEqual(over.headers(), []);
  });
});

describe('body-line-ends', () => {
  // The body a data script reads (ctx.message.text()) has the line ends the next hop receives: delivery sends a
  // bare CR or bare LF as a line end (CRLF), so a script splitting the text at CRLF must see those lines too. Before,
  // `text<CR>X-Evil: 1` was one line to a content check and two once relayed: a line the check refuses got through.
  let server: TestServer;

  before(async () => {
    server = await startTestServer({
      config: PLAIN_MX_CONFIG,
      scripts: {
        'data.ts': `export default async (ctx) => {
  const lines = (await ctx.message.text()).split('\\r\\n');
  return lines.some((l) => l.startsWith('X-Evil:')) ? reject('a line the content check refuses') : accept();
};`,
      },
    });
  });
  after(() => server?.stop());

  test('a line behind a bare CR or a bare LF in the body is a line to the data script, as to the next hop', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    for (const body of ['X-Evil: 1\r\n', 'text\rX-Evil: 1\r\n', 'text\nX-Evil: 1\r\n', 'text\r\rX-Evil: 1\r\n']) {
      const r = await c.sendMail('a@example.com', ['b@example.com'], `Subject: t\r\n\r\n${body}`);
      assert.equal(r.code, 550, `${JSON.stringify(body)}: ${r.text}`);
    }
    const fine = await c.sendMail('a@example.com', ['b@example.com'], 'Subject: t\r\n\r\ntext X-Evil: 1 inside a line\r\n');
    assert.equal(fine.code, 250, fine.text);
    await c.quit();
  });
});
