// What a next hop's EHLO reply does not offer is not sent to it. nodemailer adds BODY=8BITMIME and SMTPUTF8
// where they are offered and otherwise sent the message and the addresses as they were: 8-bit content to a
// host without 8BITMIME (RFC 6152 §3), `jörg@…` to a host without SMTPUTF8 (RFC 6531 §3.2), which may strip
// the 8th bit or deliver to another mailbox. Now a UTF-8 domain goes in its A-label form, a UTF-8 local part
// fails with 5.6.7 and 8-bit content with 5.6.3 (bounced to the sender); a host that offers both gets both.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { parseDsn, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

interface Seen { mail: string[]; rcpt: string[]; messages: string[] }

async function startPeer(offers: string[]): Promise<{ port: number; seen: Seen; close(): void }> {
  const seen: Seen = { mail: [], rcpt: [], messages: [] };
  const peer = await startScriptedPeer({
    ehlo: (s) => { s.write(['peer', ...offers].map((l, i, all) => `250${i === all.length - 1 ? ' ' : '-'}${l}\r\n`).join('')); return 'answered'; },
    mail: (_s, line) => { seen.mail.push(Buffer.from(line, 'latin1').toString('utf8')); },
    rcpt: (_s, line) => { seen.rcpt.push(Buffer.from(line, 'latin1').toString('utf8')); },
    endOfData: (_s, message) => { seen.messages.push(Buffer.from(message, 'latin1').toString('utf8')); },
  });
  return { port: peer.port, seen, close: peer.close };
}

/** One SMTPUTF8 transaction in: returns the queue id. */
async function sendUtf8(port: number, from: string, to: string[], body: string): Promise<string> {
  const c = await SmtpTestClient.connect(port);
  try {
    await c.hello();
    assert.equal((await c.command(`MAIL FROM:<${from}> SMTPUTF8`)).code, 250);
    for (const r of to) assert.equal((await c.command(`RCPT TO:<${r}>`)).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    c.write(`${body}.`);
    const r = await c.read();
    const id = /queued as ([0-9a-z]+)/.exec(r.text)?.[1];
    assert.ok(id, r.text);
    return id;
  } finally {
    await c.quit();
  }
}

async function withServer(offers: string[], run: (s: Awaited<ReturnType<typeof startDeliveryServer>>, seen: Seen) => Promise<void>): Promise<void> {
  const peer = await startPeer(offers);
  const s = await startDeliveryServer({
    config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [3600] }) }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    await run(s, peer.seen);
  } finally {
    await s.stop();
    peer.close();
  }
}

// The bounce itself is 7-bit (quoted-printable where the returned header or the text has 8-bit content): built
// with the 8-bit header as it was, it would have met the same refusal and, from the null sender, been discarded.
test('8-bit content to a next hop without 8BITMIME: not sent as is; bounced with 5.6.3, the bounce 7-bit', async () => {
  await withServer(['PIPELINING'], async (s, seen) => {
    const id = await s.send('a@example.test', ['b@example.net'], 'Subject: Gr\u00fc\u00dfe\r\n\r\nGr\u00fc\u00dfe aus K\u00f6ln\r\n');
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 30_000, past: true });
    assert.equal(e.outcomes[0]!.status, 'permanent');
    assert.equal(e.outcomes[0]!.enhanced, '5.6.3');
    assert.match(e.outcomes[0]!.reply, /does not offer 8BITMIME/);
    assert.ok(e.removed && e.bounceId);
    await s.nextAttempt((x) => x.id === e.bounceId && x.removed, { timeoutMs: 30_000, past: true });
    assert.equal(seen.messages.length, 1, 'only the bounce reached the next hop');
    assert.doesNotMatch(seen.messages[0]!, /K\u00f6ln/);
    const dsn = parseDsn(seen.messages[0]!);
    assert.equal(dsn.recipients[0]!['status'], '5.6.3');
    assert.equal(dsn.recipients[0]!['final-recipient'], 'rfc822; b@example.net');
    assert.ok(!/[^\x00-\x7f]/.test(seen.messages[0]!), 'the bounce is 7-bit');
    const returned = Buffer.from(dsn.returnedHeader.replace(/=\r\n/g, '').replace(/=([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1').toString('utf8');
    assert.match(returned, /^Subject: Gr\u00fc\u00dfe$/m, 'the returned header, quoted-printable, decodes to the original');
  });
});

test('UTF-8 addresses to a next hop without SMTPUTF8: a UTF-8 domain in A-labels, a UTF-8 local part bounced with 5.6.7', async () => {
  await withServer(['8BITMIME'], async (s, seen) => {
    const id = await sendUtf8(s.port(), 'a@example.test', ['j\u00f6rg@example.net', 'bob@b\u00fccher.example'], 'Subject: hi\r\n\r\nhello\r\n');
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 30_000, past: true });
    const by = new Map(e.outcomes.map((o) => [o.recipient, o]));
    assert.equal(by.get('bob@b\u00fccher.example')?.status, 'delivered');
    assert.equal(by.get('j\u00f6rg@example.net')?.status, 'permanent');
    assert.equal(by.get('j\u00f6rg@example.net')?.enhanced, '5.6.7');
    assert.match(by.get('j\u00f6rg@example.net')!.reply, /SMTPUTF8 is required, but was not offered/);
    assert.deepEqual(seen.rcpt.slice(0, 1), ['RCPT TO:<bob@xn--bcher-kva.example>']);
    assert.doesNotMatch(seen.mail[0]!, /SMTPUTF8/);
    assert.ok(!seen.rcpt.some((r) => /[^\x00-\x7f]/.test(r)), `no UTF-8 address sent: ${seen.rcpt.join(' | ')}`);
    assert.ok(e.bounceId, 'the local part that cannot be sent is bounced');
  });
});

test('a UTF-8 sender to a next hop without SMTPUTF8: nothing sent, every recipient bounced with 5.6.7', async () => {
  await withServer(['8BITMIME'], async (s, seen) => {
    const id = await sendUtf8(s.port(), 'j\u00f6rg@example.test', ['b@example.net', 'c@example.net'], 'Subject: hi\r\n\r\nhello\r\n');
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 30_000, past: true });
    assert.deepEqual(e.outcomes.map((o) => [o.status, o.enhanced]), [['permanent', '5.6.7'], ['permanent', '5.6.7']]);
    assert.equal(seen.mail.filter((m) => /j\u00f6rg|xn--/.test(m)).length, 0, 'no MAIL FROM with the UTF-8 sender');
  });
});

test('a next hop that offers 8BITMIME and SMTPUTF8 gets the message and the addresses as they are', async () => {
  await withServer(['8BITMIME', 'SMTPUTF8'], async (s, seen) => {
    const id = await sendUtf8(s.port(), 'j\u00f6rg@example.test', ['b\u00fc@b\u00fccher.example'], 'Subject: K\u00f6ln\r\n\r\nGr\u00fc\u00dfe\r\n');
    const e = await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 30_000, past: true });
    assert.equal(e.outcomes[0]!.status, 'delivered');
    assert.match(seen.mail[0]!, /^MAIL FROM:<j\u00f6rg@example\.test> .*SMTPUTF8/);
    assert.match(seen.mail[0]!, /BODY=8BITMIME/);
    assert.deepEqual(seen.rcpt, ['RCPT TO:<b\u00fc@b\u00fccher.example>']);
    assert.match(seen.messages[0]!, /Gr\u00fc\u00dfe/);
  });
});

// The bounce for a UTF-8 recipient names it in the delivery-status part as RFC 6533's `utf-8` type with `\x{HHHH}`
// escapes, and its text part is quoted-printable: 7-bit, it reaches a next hop that offers neither extension.
test('the bounce for a UTF-8 recipient is 7-bit and reaches a next hop without 8BITMIME or SMTPUTF8', async () => {
  await withServer([], async (s, seen) => {
    const id = await sendUtf8(s.port(), 'a@example.test', ['j\u00f6rg+x@example.net'], 'Subject: hi\r\n\r\nhello\r\n');
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 30_000, past: true });
    assert.equal(e.outcomes[0]!.enhanced, '5.6.7');
    assert.ok(e.bounceId);
    const bounce = await s.nextAttempt((x) => x.id === e.bounceId, { timeoutMs: 30_000, past: true });
    assert.equal(bounce.outcomes[0]!.status, 'delivered', bounce.outcomes[0]!.reply);
    assert.equal(seen.messages.length, 1);
    assert.ok(!/[^\x00-\x7f]/.test(seen.messages[0]!), 'the bounce is 7-bit');
    const dsn = parseDsn(seen.messages[0]!);
    assert.equal(dsn.recipients[0]!['final-recipient'], 'utf-8; j\\x{F6}rg\\x{2B}x@example.net');
    assert.equal(dsn.recipients[0]!['status'], '5.6.7');
  });
});

// An SMTPUTF8 message is internationalized by its header too (RFC 6532): a raw UTF-8 `From:` or `Subject:` with
// ASCII addresses. nodemailer declares SMTPUTF8 only for a UTF-8 address, so such a message went to a host that
// offers SMTPUTF8 without it (the next hop then takes the UTF-8 header for undeclared 8-bit text), and to one that
// offers only 8BITMIME as if it were plain 8-bit mail (RFC 6531 §3.2 forbids sending it there). Now it is
// declared where SMTPUTF8 is offered, and fails with 5.6.7 (as Postfix: "SMTPUTF8 is required") where it is not.
test('an SMTPUTF8 message with a UTF-8 header and ASCII addresses: declared to a host that offers SMTPUTF8', async () => {
  await withServer(['8BITMIME', 'SMTPUTF8'], async (s, seen) => {
    const id = await sendUtf8(s.port(), 'a@example.test', ['b@example.net'], 'From: J\u00f6rg <a@example.test>\r\nSubject: K\u00f6ln\r\n\r\nhello\r\n');
    const e = await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 30_000, past: true });
    assert.equal(e.outcomes[0]!.status, 'delivered');
    assert.match(seen.mail[0]!, /^MAIL FROM:<a@example\.test> .*SMTPUTF8/);
    assert.match(seen.messages[0]!, /Subject: K\u00f6ln/);
  });
});

test('an SMTPUTF8 message with a UTF-8 header to a host without SMTPUTF8: not sent, bounced with 5.6.7', async () => {
  await withServer(['8BITMIME'], async (s, seen) => {
    const id = await sendUtf8(s.port(), 'a@example.test', ['b@example.net', 'c@example.net'], 'From: J\u00f6rg <a@example.test>\r\nSubject: K\u00f6ln\r\n\r\nhello\r\n');
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 30_000, past: true });
    assert.deepEqual(e.outcomes.map((o) => [o.status, o.enhanced]), [['permanent', '5.6.7'], ['permanent', '5.6.7']]);
    assert.match(e.outcomes[0]!.reply, /SMTPUTF8 is required, but was not offered/);
    assert.equal(seen.messages.filter((m) => m.includes('K\u00f6ln')).length, 0, 'the UTF-8 header was not sent');
  });
});

test('an ASCII-header SMTPUTF8 message, or 8-bit header text without SMTPUTF8 (legacy clients), still goes to a host without SMTPUTF8', async () => {
  await withServer(['8BITMIME'], async (s, seen) => {
    const utf8 = await sendUtf8(s.port(), 'a@example.test', ['b@example.net'], 'Subject: hi\r\n\r\nGr\u00fc\u00dfe\r\n');
    assert.equal((await s.nextAttempt((x) => x.id === utf8 && x.removed, { timeoutMs: 30_000, past: true })).outcomes[0]!.status, 'delivered');
    const c = await SmtpTestClient.connect(s.port());
    await c.hello();
    const r = await c.sendMail('a@example.test', ['c@example.net'], 'Subject: K\u00f6ln\r\n\r\nhello\r\n');
    await c.quit();
    const legacy = /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
    assert.equal((await s.nextAttempt((x) => x.id === legacy && x.removed, { timeoutMs: 30_000, past: true })).outcomes[0]!.status, 'delivered');
    assert.doesNotMatch(seen.mail.join('\n'), /SMTPUTF8/);
  });
});

test('an SMTPUTF8 message to one IDN recipient with an ASCII header goes to a host without SMTPUTF8, all 7-bit', async () => {
  await withServer(['8BITMIME'], async (s, seen) => {
    const id = await sendUtf8(s.port(), 'a@example.test', ['bob@b\u00fccher.example'], 'Subject: hi\r\n\r\nhello\r\n');
    const e = await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 30_000, past: true });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    // Our own Received: names the recipient by its A-labels, so the header needs no SMTPUTF8.
    assert.match(seen.messages[0]!, /\tfor <bob@xn--bcher-kva\.example>;/);
    assert.ok(!/[^\x00-\x7f]/.test(seen.messages[0]!), 'the message is 7-bit');
  });
});
