// The data hook's header edits and body reads, through a real server and its spool: what is spooled is the
// edited message (our Received header first), the body is read back only on demand, and every malformed
// edit fails closed with 451 4.3.0 and spools nothing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { PLAIN_MX_CONFIG, startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

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
