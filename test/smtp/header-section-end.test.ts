// Where the header section ends. A line that is neither a field (`name:`, the name printable ASCII without
// spaces) nor a folded line ends it, as Postfix (cleanup's is_header()) and Exim read a message: that line is the
// first of the body, and they write the empty line the client left out. Postern read such a section on to the
// next empty line (none: the whole message), so the data hook's ctx.message.text() was "" and a content check
// passed `Subject: x<CRLF>Buy viagra now<CRLF>`, while a real Postfix next hop delivered "Buy viagra now" as the
// body. Now the hook reads the body the next hop delivers, and the spool holds the empty line Postfix would write.
// And a NUL in a field, where a C next hop ends the field and the hook saw all of it, is refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { HeaderReader } from '../../engine/smtp/header-reader.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { freePort, needsPostfix, startPostfix, startSmtpSink } from '../helpers/postfix.ts';
import { startSink, type Sink } from '../helpers/sink.ts';

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
