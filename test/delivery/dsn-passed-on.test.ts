// The DSN parameters a client gives (RFC 3461) go on to a next hop that offers DSN: RET and ENVID on MAIL FROM,
// each recipient's own NOTIFY and ORCPT on its RCPT TO. They were kept only in part (NOTIFY) and never passed on:
// a recipient's NOTIFY=NEVER did not stop the next hop's bounces, and ORCPT and ENVID were lost. To a next hop
// without DSN nothing is passed on, and this server's own notices carry Original-Envelope-Id and Original-Recipient.
// A UTF-8 ORCPT was not passed on at all: it goes as RFC 6533's 7-bit utf-8 type, unless that makes it longer than 500
// characters. An ENVID that is not printable ASCII (spooled by an earlier release) is not passed on: a next hop refuses it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { parseDsn, sleep, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { startTestServer } from '../helpers/postern.ts';

async function startPeer(offers: string[]): Promise<{ port: number; mail: string[]; rcpt: string[]; messages: string[]; close(): void }> {
  const seen = { mail: [] as string[], rcpt: [] as string[], messages: [] as string[] };
  const peer = await startScriptedPeer({
    ehlo: (s) => { s.write(['peer', ...offers].map((l, i, all) => `250${i === all.length - 1 ? ' ' : '-'}${l}\r\n`).join('')); return 'answered'; },
    mail: (_s, line) => { seen.mail.push(line); },
    rcpt: (s, line) => {
      seen.rcpt.push(line);
      if (/<bad/.test(line)) { s.write('550 5.1.1 no such user\r\n'); return 'answered'; }
    },
    endOfData: (_s, message) => { seen.messages.push(message); },
  });
  return { port: peer.port, ...seen, close: peer.close };
}

async function sendWithDsn(port: number): Promise<string> {
  const c = await SmtpTestClient.connect(port);
  try {
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.test> RET=HDRS ENVID=env+2B42')).code, 250);
    assert.equal((await c.command('RCPT TO:<never@example.net> NOTIFY=NEVER')).code, 250);
    assert.equal((await c.command('RCPT TO:<asked@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Asked+2Bx@example.org')).code, 250);
    assert.equal((await c.command('RCPT TO:<plain@example.net>')).code, 250);
    assert.equal((await c.command('RCPT TO:<bad@example.net> ORCPT=rfc822;b+C3+A4d-orig@example.org')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    c.write('Subject: dsn\r\n\r\nhello\r\n.');
    const r = await c.read();
    return /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
  } finally {
    await c.quit();
  }
}

async function withServer(offers: string[], run: (s: Awaited<ReturnType<typeof startDeliveryServer>>, peer: Awaited<ReturnType<typeof startPeer>>) => Promise<void>): Promise<void> {
  const peer = await startPeer(offers);
  const s = await startDeliveryServer({
    config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [3600] }) }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    await run(s, peer);
  } finally {
    await s.stop();
    peer.close();
  }
}

test('to a next hop that offers DSN: RET and ENVID on MAIL FROM, each recipient\'s NOTIFY and ORCPT on its RCPT TO; no notice of ours for NOTIFY=SUCCESS', async () => {
  await withServer(['8BITMIME', 'DSN'], async (s, peer) => {
    const id = await sendWithDsn(s.port());
    const e = await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 30_000, past: true });
    assert.match(peer.mail[0]!, /^MAIL FROM:<a@example\.test> .*RET=HDRS/);
    assert.match(peer.mail[0]!, / ENVID=env\+2B42(\s|$)/);
    assert.deepEqual(peer.rcpt, [
      'RCPT TO:<never@example.net> NOTIFY=NEVER',
      'RCPT TO:<asked@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Asked+2Bx@example.org',
      'RCPT TO:<plain@example.net>',
      // A UTF-8 ORCPT (its xtext bytes UTF-8) as RFC 6533's 7-bit utf-8 type.
      'RCPT TO:<bad@example.net> ORCPT=utf-8;b\\x{E4}d-orig@example.org',
    ]);
    assert.ok(e.bounceId, 'bad@ bounced by this server (refused at RCPT)');
    await s.nextAttempt((x) => x.id === e.bounceId && x.removed, { timeoutMs: 30_000, past: true });
    await s.scans(1);
    assert.equal(peer.messages.filter((m) => /Successful Mail Delivery Report/.test(m)).length, 0, 'the next hop answers for NOTIFY=SUCCESS');
    const bounce = parseDsn(peer.messages.find((m) => /Undelivered Mail/.test(m))!);
    assert.equal(bounce.perMessage['original-envelope-id'], 'env+42');
    assert.equal(bounce.recipients[0]!['original-recipient'], 'utf-8;b\\x{E4}d-orig@example.org');
  });
});

test('to a next hop without DSN: nothing passed on; the success notice is ours, with Original-Envelope-Id and Original-Recipient', async () => {
  await withServer(['8BITMIME'], async (s, peer) => {
    const id = await sendWithDsn(s.port());
    await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 30_000, past: true });
    assert.ok(!/RET=|ENVID=/.test(peer.mail[0]!), peer.mail[0]);
    assert.ok(peer.rcpt.every((r) => !/NOTIFY=|ORCPT=/.test(r)), peer.rcpt.join(' | '));
    await until('the success notice delivered', () => peer.messages.some((m) => /Successful Mail Delivery Report/.test(m)));
    const notice = parseDsn(peer.messages.find((m) => /Successful Mail Delivery Report/.test(m))!);
    assert.equal(notice.perMessage['original-envelope-id'], 'env+42');
    assert.deepEqual(notice.recipients.map((r) => [r['original-recipient'], r['final-recipient'], r.action]), [['rfc822;Asked+x@example.org', 'rfc822; asked@example.net', 'relayed']]);
  });
});

test('to Postern as the next hop: an ORCPT longer than RFC 3461\'s 500 characters once written 7-bit is not passed on, and the recipient is delivered, not bounced for it', async () => {
  // The next hop: a second Postern (it offers DSN and refuses an ORCPT over 500 characters, 501 5.5.4).
  const next = await startTestServer({
    config: configYaml({ listeners: [testListener('mx')], localDomains: ['example.net'] }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  const s = await startDeliveryServer({
    config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(next.port('mx'), { retrySchedule: [3600] }) }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    // A UTF-8 address of 82 characters (a 70-character local part in CJK: within 500 as sent), 578 as RFC 6533's 7-bit utf-8 type.
    const orcpt = `rfc822;${'\u65e5'.repeat(70)}@example.org`;
    const c = await SmtpTestClient.connect(s.port());
    await c.hello();
    const id = await sendWithParams(c, '<a@example.test> SMTPUTF8', [`<long@example.net> ORCPT=${orcpt}`, '<short@example.net> ORCPT=rfc822;short-orig@example.org'], 'Subject: dsn\r\n\r\nhello\r\n');
    await c.quit();
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 30_000, past: true });
    assert.deepEqual(e.outcomes.map((o) => [o.recipient, o.status, o.reply]).filter(([, status]) => status !== 'delivered'), []);
    assert.equal(e.bounceId, null);
    const [relayed] = await next.runtime.spool.list();
    const env = await next.runtime.spool.readEnvelope(relayed!);
    assert.deepEqual(env.recipients.map((r) => [r.address, r.orcpt]), [['long@example.net', undefined], ['short@example.net', 'rfc822;short-orig@example.org']]);
  } finally {
    await s.stop();
    await next.stop();
  }
});

test('an ENVID spooled by an earlier release that is not printable US-ASCII is not passed on: the next hop refused MAIL FROM for it (as Postfix does), and the message bounced', async () => {
  const peer = await startScriptedPeer({
    ehlo: (s) => { s.write('250-peer\r\n250-8BITMIME\r\n250 DSN\r\n'); return 'answered'; },
    mail: (s, line) => {
      // Postfix: xtext-decoded, it must be printable ASCII (allprint), else 501.
      const envid = / ENVID=(\S+)/.exec(line)?.[1];
      const decoded = envid && Buffer.from(envid.replace(/\+([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1');
      if (decoded && !decoded.every((b) => b >= 0x20 && b <= 0x7e)) { s.write('501 5.5.4 Bad ENVID parameter syntax\r\n'); return 'answered'; }
    },
  });
  const s = await startDeliveryServer({
    config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [3600] }) }),
  });
  try {
    const id = s.runtime.spool.newId();
    const w = s.runtime.spool.create(id);
    w.write(Buffer.from('Subject: old\r\n\r\nhello\r\n'));
    await w.commit({
      version: 1, id, receivedAt: new Date().toISOString(), sender: 'a@example.test', recipients: [{ address: 'b@example.net' }], size: 0,
      dsn: { ret: 'HDRS', envid: 'caf\u00e9' },
      session: { listener: 'in', remoteAddress: '127.0.0.1', helo: null, authenticatedUser: null, clientCertificate: null },
      attempts: 0, nextAttemptAt: new Date().toISOString(), errors: [],
    });
    s.queue!.notify(id);
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 30_000, past: true });
    assert.deepEqual(e.outcomes.map((o) => [o.recipient, o.status, o.reply]).filter(([, status]) => status !== 'delivered'), []);
  } finally {
    await s.stop();
    peer.close();
  }
});

test('a success notice is tried once its message\'s outcome is on disk: on a slow disk it went out before and waited a whole retry delay', async () => {
  await withServer(['8BITMIME'], async (s, peer) => {
    // A slow disk: the delivered message is removed from the spool a second later.
    const remove = s.spools.remove.bind(s.spools);
    s.spools.remove = async (...args: Parameters<typeof remove>) => { await sleep(1000); return remove(...args); };
    const c = await SmtpTestClient.connect(s.port());
    await c.hello();
    await sendWithParams(c, '<a@example.test>', ['<asked@example.net> NOTIFY=SUCCESS'], 'Subject: dsn\r\n\r\nhello\r\n');
    await c.quit();
    // The retry delay is an hour (withServer): the notice arrives now or not within the test.
    await until('the success notice delivered', () => peer.messages.some((m) => /Successful Mail Delivery Report/.test(m)), { timeoutMs: 20_000 });
    assert.equal(s.logs.filter((l) => /waits for the outcome/.test(String(l.msg))).length, 0);
  });
});
