// Delivery and the verdicts around it: an early verdict, replies while the event loop is held, DSN parameters passed
// on, too many recipients, the predelivery verdicts' matrix, concurrency across a reload and long lines. One file for
// what were several (one test process and one load of the engine instead of one each), each its own describe with its
// own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { readFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer, parseDsn, sleep, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener, smarthostDelivery } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { ConnectionPool, type Endpoint } from '../../engine/delivery/connection-pool.ts';
import type { ConnectionSecurity } from '../../engine/delivery/outbound-tls.ts';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';
import { startTestServer } from '../helpers/postern.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { MAX_TRANSACTIONS, isTooManyRecipients } from '../../engine/delivery/transaction.ts';
import { retryMessages } from '../../engine/queue/admin.ts';
import type { AttemptEvent } from '../../engine/queue/runner.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';
import { startRawSink } from '../helpers/raw-sink.ts';
import { verifyDkim } from '../helpers/dkim.ts';
import { useSigningDelivery } from '../helpers/dkim-delivery.ts';
import { HeaderReader } from '../../engine/smtp/header-reader.ts';
import { parseConfig } from '../../engine/config/load-config.ts';
import { withLinesWithin } from '../../engine/delivery/line-length.ts';

describe('early-verdict', () => {
  // A next hop that says 250 to the message before the message's final dot was sent (its replies out of step with our
  // commands: a stray reply queued behind the 354, a broken proxy answering for the host behind it) was taken at its
  // word: nodemailer reads any reply while the message is still going out as the verdict on it, so the recipients were
  // recorded delivered and the message left the queue, while the next hop had never seen its end (RFC 5321 §4.1.1.4:
  // the receiver keeps the message only once the final dot arrives). Now a 2yz before the end of the message is no
  // verdict: the recipients are deferred (the next hop may have something of it, so a duplicate is possible; a loss
  // is not), and the connection is not used again.
  test('a 250 before the final dot is no verdict on the message: deferred, not recorded delivered', async () => {
    let ends = 0;
    let bytesAfter354 = 0;
    const peer = await startScriptedPeer({
      data: (s) => {
        // The go-ahead and, at once, a "verdict" on a message it has not read yet.
        s.write('354 go on\r\n250 2.0.0 queued as EARLY\r\n');
        s.removeAllListeners('data');
        s.on('data', (d: Buffer) => { bytesAfter354 += d.length; if (d.toString('latin1').includes('\r\n.\r\n')) ends++; });
        return 'stop';
      },
    });
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
    });
    try {
      const id = await s.send('a@origin.test', ['b@dest.test', 'c@dest.test'], `Subject: early\r\n\r\n${'line of the message\r\n'.repeat(20_000)}`);
      const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
      assert.deepEqual(e.outcomes.map((o) => o.status), ['temporary', 'temporary'], e.outcomes[0]!.reply);
      assert.match(e.outcomes[0]!.reply, /250 2\.0\.0 queued as EARLY.*before the end of the message/);
      await until('the connection closed or the message out', () => bytesAfter354 > 0, { timeoutMs: 60_000 });
      assert.ok(ends <= 1);
    } finally {
      await s.stop();
      peer.close();
    }
  });

  test('a blank line after the 354 is no reply: the verdict after the final dot counts, delivered', async () => {
    const blank = await startScriptedPeer({
      data: (s) => {
        s.write('354 go on\r\n\r\n');
        let buf = '';
        s.removeAllListeners('data');
        s.on('data', (d: Buffer) => {
          buf += d.toString('latin1');
          if (buf.includes('\r\n.\r\n')) { buf = ''; s.write('250 2.0.0 queued\r\n'); }
        });
        return 'stop';
      },
    });
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: blank.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
    });
    try {
      const id = await s.send('a@origin.test', ['b@dest.test']);
      const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
      assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    } finally {
      await s.stop();
      blank.close();
    }
  });

  test('a 250 begun before the message and finished after its final dot is no verdict either: deferred', async () => {
    // Its first bytes come with the 354, the rest of its line only once the whole message is in: nodemailer holds the
    // unfinished line apart from its replies, and only completes it after the final dot went out.
    let ends = 0;
    const split = await startScriptedPeer({
      data: (s) => {
        s.write('354 go on\r\n250 2.0.0 queued as SPL');
        let buf = '';
        s.removeAllListeners('data');
        s.on('data', (d: Buffer) => {
          buf += d.toString('latin1');
          if (buf.includes('\r\n.\r\n')) { buf = ''; ends++; s.write('IT\r\n'); }
        });
        return 'stop';
      },
    });
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: split.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
    });
    try {
      const id = await s.send('a@origin.test', ['b@dest.test']);
      const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
      assert.equal(e.outcomes[0]!.status, 'temporary', e.outcomes[0]!.reply);
      assert.match(e.outcomes[0]!.reply, /queued as SPL.*before the end of the message/);
    } finally {
      await s.stop();
      split.close();
    }
  });

  test('a 250 begun while the message goes out, its line ended after the final dot: deferred', async () => {
    // The peer stops reading at the message's first bytes and sends the start of a reply: the message (far more than
    // the sockets' buffers hold) cannot be all out before that start is read. Its line ends once the message is in.
    const midway = await startScriptedPeer({
      data: (s) => {
        s.write('354 go on\r\n');
        let buf = '';
        let begun = false;
        s.removeAllListeners('data');
        s.on('data', (d: Buffer) => {
          if (!begun) {
            begun = true;
            s.pause();
            s.write('250 2.0.0 queued as MID', () => setTimeout(() => s.resume(), 100));
          }
          buf = (buf + d.toString('latin1')).slice(-5);
          if (buf.endsWith('\r\n.\r\n')) s.write('WAY\r\n');
        });
        return 'stop';
      },
    });
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: midway.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
    });
    try {
      const id = await s.send('a@origin.test', ['b@dest.test'], `Subject: midway\r\n\r\n${'line of the message\r\n'.repeat(600_000)}`);
      const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
      assert.equal(e.outcomes[0]!.status, 'temporary', e.outcomes[0]!.reply);
      assert.match(e.outcomes[0]!.reply, /queued as MIDWAY.*before the end of the message/);
    } finally {
      await s.stop();
      midway.close();
    }
  });

  test('a refusal before the end of the message: no RSET written into the message still going out, the connection closed', async () => {
    // A next hop that refuses with the 354 (a message it will not take) and reads on. The RSET after the failed
    // transaction went onto the socket in the middle of the message's data, and its reply was awaited (up to
    // endOfDataTimeoutMs) from a next hop that read it as a line of the message.
    let received = '';
    let over = false;
    const refusing = await startScriptedPeer({
      data: (s) => {
        s.write('354 go on\r\n552 5.3.4 message too big for me\r\n');
        s.removeAllListeners('data');
        // Not read for a while: the message cannot be all out before the refusal is read.
        s.pause();
        setTimeout(() => s.resume(), 300);
        s.on('data', (d: Buffer) => { received += d.toString('latin1'); if (received.includes('\r\n.\r\n')) over = true; });
        s.on('close', () => { over = true; });
        return 'stop';
      },
    });
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: refusing.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
    });
    try {
      const id = await s.send('a@origin.test', ['b@dest.test'], `Subject: big\r\n\r\n${'line of the message\r\n'.repeat(600_000)}`);
      await until('the message ended or the connection closed', () => over, { timeoutMs: 60_000 });
      assert.ok(!/RSET/.test(received), 'no command inside the message');
      const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
      assert.equal(e.outcomes[0]!.status, 'permanent', e.outcomes[0]!.reply);
      assert.match(e.outcomes[0]!.reply, /552 5\.3\.4/);
    } finally {
      await s.stop();
      refusing.close();
    }
  });
});

describe('held-event-loop-replies', () => {
  /**
   * A next hop's reply that came within commandTimeoutMs is a reply, however late the queue process's event loop gets
   * to it. The next hop runs on its own thread (its own event loop), so it answers while the test holds the queue's,
   * as a loaded machine that descheduled the process, or one long turn of other work, holds it: the reply then waits
   * in the socket while the limit passes. An event loop that gets the CPU back runs its timers before it reads its
   * sockets, and the reply deadline (reply-deadline.ts) and nodemailer's socket timeout, judged in their timers, failed
   * the connection with ETIMEDOUT: a delivery deferred, and a message that had gone out perhaps sent twice.
   */
  const PLAIN: ConnectionSecurity = { secure: false, ignoreTLS: true, requireTLS: false, opportunisticTLS: false, tls: {}, mode: 'none', key: 'none' };
  const TIMEOUT_MS = 2000;

  /** Hold this thread's event loop for `ms`. */
  function holdEventLoop(ms: number): void {
    const end = performance.now() + ms;
    while (performance.now() < end);
  }

  /**
   * A next hop on its own thread that holds back one answer (`held`: its greeting, or its EHLO reply): it tells the
   * test ('connected' or 'ehlo') and answers once told to (flags[0] = 1), setting flags[1] when the answer is written.
   */
  function nextHopThread(flags: Int32Array, held: 'greeting' | 'ehlo'): Worker {
    return new Worker(`
    const net = require('node:net');
    const { parentPort, workerData: { flags, held } } = require('node:worker_threads');
    const server = net.createServer((s) => {
      if (held === 'greeting') {
        parentPort.postMessage('connected');
        Atomics.wait(flags, 0, 0); // until the test holds the queue's event loop
        s.write('220 next-hop.test ESMTP\\r\\n', () => Atomics.store(flags, 1, 1));
      } else s.write('220 next-hop.test ESMTP\\r\\n');
      let seen = '';
      s.on('data', (b) => {
        seen += b.toString('latin1');
        if (!seen.endsWith('\\r\\n')) return;
        const line = seen;
        seen = '';
        if (/^EHLO/i.test(line) && held === 'greeting') s.write('250 next-hop.test\\r\\n');
        else if (/^EHLO/i.test(line)) {
          parentPort.postMessage('ehlo');
          Atomics.wait(flags, 0, 0); // until the test holds the queue's event loop
          s.write('250 next-hop.test\\r\\n', () => Atomics.store(flags, 1, 1));
        } else if (/^QUIT/i.test(line)) s.end('221 bye\\r\\n');
      });
      s.on('error', () => {});
    });
    server.listen(0, '127.0.0.1', () => parentPort.postMessage(server.address().port));`, { eval: true, workerData: { flags, held } });
  }

  for (const [held, what, limit] of [['ehlo', 'an EHLO reply', 'commandTimeoutMs'], ['greeting', 'a greeting', 'connectTimeoutMs']] as const) {
    test(`${what} written within ${limit} while the event loop was held past it: the connection opens, no ETIMEDOUT`, async () => {
      const flags = new Int32Array(new SharedArrayBuffer(8));
      const hop = nextHopThread(flags, held);
      const pool = new ConnectionPool();
      try {
        const [port] = await once(hop, 'message') as [number];
        const endpoint: Endpoint = { host: 'mx.next-hop.test', address: '127.0.0.1', port, security: PLAIN };
        const opening = pool.open(endpoint, { heloName: 'postern.test', connectTimeoutMs: TIMEOUT_MS, commandTimeoutMs: TIMEOUT_MS });
        opening.catch(() => undefined);
        await once(hop, 'message'); // 'connected' or 'ehlo': the clocks run
        // From here the event loop is held: the next hop answers at once; the hold lasts past the limit.
        Atomics.store(flags, 0, 1);
        Atomics.notify(flags, 0);
        while (Atomics.load(flags, 1) === 0) holdEventLoop(1);
        holdEventLoop(TIMEOUT_MS + 200);
        const opened = await opening;
        assert.ok(opened.conn, 'opened');
        pool.release(opened, false);
      } finally {
        pool.close();
        await hop.terminate();
      }
    });
  }
});

describe('dsn-passed-on', () => {
  // The DSN parameters a client gives (RFC 3461) go on to a next hop that offers DSN: RET and ENVID on MAIL FROM,
  // each recipient's own NOTIFY and ORCPT on its RCPT TO. They were kept only in part (NOTIFY) and never passed on:
  // a recipient's NOTIFY=NEVER did not stop the next hop's bounces, and ORCPT and ENVID were lost. To a next hop
  // without DSN nothing is passed on, and this server's own notices carry Original-Envelope-Id and Original-Recipient.
  // A UTF-8 ORCPT was not passed on at all: it goes as RFC 6533's 7-bit utf-8 type, unless that makes it longer than 500
  // characters. An ENVID that is not printable ASCII (spooled by an earlier release) is not passed on: a next hop refuses it.
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
});

describe('too-many-recipients', () => {
  // A next hop that limits the recipients per transaction (RCPT 452 4.5.3 "too many recipients", RFC 5321
  // §4.5.3.1.10): the refused recipients go in following transactions of the same attempt, not on the retry
  // schedule; a plain 452 and 552 5.5.3 count too; other 4xx replies stay per-recipient temporary failures;
  // no progress, or MAX_TRANSACTIONS transactions, end the attempt.
  /** 452 4.5.3 after 2 recipients; `stuck…` always gets 452 4.5.3, `busy…` 451. */
  let limited: Sink;
  /** A plain "452 Error: too many recipients" (no enhanced code) after 3. */
  let plain: Sink;
  /** 552 5.5.3 after 1 (RFC 5321: to be treated as temporary). */
  let five: Sink;
  /** 452 4.5.3 after 1: more recipients than MAX_TRANSACTIONS. */
  let one: Sink;
  let s: DeliveryServer;

  before(async () => {
    limited = await startSink({
      maxRecipients: 2,
      decide(stage, address) {
        if (stage !== 'rcpt') return null;
        if (address.startsWith('stuck')) return { code: 452, text: '4.5.3 Too many recipients' };
        if (address.startsWith('busy')) return { code: 451, text: '4.3.0 Try again later' };
        return null;
      },
    });
    plain = await startSink({ maxRecipients: 3, tooManyReply: { code: 452, text: 'Error: too many recipients' } });
    five = await startSink({ maxRecipients: 1, tooManyReply: { code: 552, text: '5.5.3 Too many recipients' } });
    one = await startSink({ maxRecipients: 1 });
    s = await startDeliveryServer({
      config: configYaml({
        hostname: 'postern.test',
        sandbox: { timeoutMs: 1000 },
        listeners: [testListener('in', { limits: { maxRecipients: 500 } })],
        delivery: smarthostDelivery(limited.port, { retrySchedule: [600] }),
      }),
      scripts: {
        'rcptto.ts': 'export default () => accept();',
        'predelivery.ts': `
const PORTS: Record<string, number> = { 'plain.test': ${plain.port}, 'five.test': ${five.port}, 'many.test': ${one.port} };
export default function predelivery(ctx: PredeliveryContext): PredeliveryVerdict | void {
  const port = PORTS[ctx.destination.domain];
  if (port) return deliver({ host: '127.0.0.1', port });
}
`,
      },
    });
  });
  after(async () => {
    await s?.stop();
    for (const sink of [limited, plain, five, one]) await sink?.close();
  });

  const rcpts = (n: number, domain: string): string[] => Array.from({ length: n }, (_, i) => `r${i + 1}@${domain}`);
  const from = (sink: Sink, sender: string) => sink.messages.filter((m) => m.from === sender);
  const firstAttempt = (id: string): Promise<AttemptEvent> => s.nextAttempt((e) => e.id === id, { past: true });

  test('452 4.5.3 after 2 recipients: 5 recipients arrive in 3 transactions on one connection, in one attempt', async () => {
    const id = await s.send('one@origin.test', rcpts(5, 'dest.test'));
    const e = await firstAttempt(id);
    assert.equal(e.attempt, 1);
    assert.equal(e.removed, true, JSON.stringify(e.outcomes));
    assert.deepEqual(e.outcomes.map((o) => [o.recipient, o.status]), rcpts(5, 'dest.test').map((r) => [r, 'delivered']));
    const got = from(limited, 'one@origin.test');
    assert.deepEqual(got.map((m) => m.to), [['r1@dest.test', 'r2@dest.test'], ['r3@dest.test', 'r4@dest.test'], ['r5@dest.test']]);
    assert.equal(new Set(got.map((m) => m.sessionId)).size, 1, 'the following transactions reuse the connection');
    assert.ok(got.every((m) => m.data.equals(got[0]!.data)), 'the same message each time');
    assert.deepEqual(s.attempts.filter((a) => a.id === id).map((a) => a.attempt), [1]);
    // Each transaction is logged as sent; the carry-overs are logged as such, not as deferrals.
    const logs = s.logs.filter((l) => l.id === id);
    assert.deepEqual(logs.filter((l) => l.status === 'sent').map((l) => l.to), [['r1@dest.test', 'r2@dest.test'], ['r3@dest.test', 'r4@dest.test'], ['r5@dest.test']]);
    assert.equal(logs.filter((l) => l.status === 'deferred').length, 0);
    assert.deepEqual(logs.filter((l) => String(l.msg).startsWith('too many recipients for one transaction:')).map((l) => [l.to, l.reply]), [
      [['r3@dest.test', 'r4@dest.test', 'r5@dest.test'], '452 4.5.3 Too many recipients'],
      [['r5@dest.test'], '452 4.5.3 Too many recipients'],
    ]);
  });

  test('a plain 452 (no enhanced code) and 552 5.5.3 are followed up the same way; 552 5.5.3 is no bounce', async () => {
    const a = await s.send('plain@origin.test', rcpts(7, 'plain.test'));
    const b = await s.send('five@origin.test', rcpts(3, 'five.test'));
    for (const [id, n] of [[a, 7], [b, 3]] as const) {
      const e = await firstAttempt(id);
      assert.equal(e.attempt, 1);
      assert.equal(e.removed, true, JSON.stringify(e.outcomes));
      assert.equal(e.outcomes.filter((o) => o.status === 'delivered').length, n);
      assert.equal(e.bounceId, null);
    }
    assert.deepEqual(from(plain, 'plain@origin.test').map((m) => m.to.length), [3, 3, 1]);
    assert.deepEqual(from(five, 'five@origin.test').map((m) => m.to), [['r1@five.test'], ['r2@five.test'], ['r3@five.test']]);
  });

  test('other 4xx on RCPT stay per-recipient; a 452 that makes no progress waits for the next attempt', async () => {
    const id = await s.send('two@origin.test', ['a@dest.test', 'stuck@dest.test', 'busy@dest.test']);
    const e = await firstAttempt(id);
    assert.equal(e.attempt, 1);
    assert.equal(e.removed, false);
    assert.ok(e.nextAttemptAt);
    const by = new Map(e.outcomes.map((o) => [o.recipient, o]));
    assert.equal(by.get('a@dest.test')!.status, 'delivered');
    assert.deepEqual([by.get('stuck@dest.test')!.status, by.get('stuck@dest.test')!.reply], ['temporary', '452 4.5.3 Too many recipients']);
    assert.deepEqual([by.get('busy@dest.test')!.status, by.get('busy@dest.test')!.reply], ['temporary', '451 4.3.0 Try again later']);
    assert.deepEqual(from(limited, 'two@origin.test').map((m) => m.to), [['a@dest.test']]);
    // The first transaction, and one more for `stuck` alone (refused again: no progress, so no third); `busy` is not resent.
    assert.equal(limited.attempts.filter((a) => a.from === 'two@origin.test').length, 2);
    assert.ok(s.logs.some((l) => l.id === id && String(l.msg).startsWith('too many recipients for one transaction, and no progress')));
  });

  test(`at most ${MAX_TRANSACTIONS} transactions per attempt; the rest go in the next attempt`, async () => {
    const all = rcpts(MAX_TRANSACTIONS + 2, 'many.test');
    const id = await s.send('many@origin.test', all);
    const e = await firstAttempt(id);
    assert.equal(e.attempt, 1);
    assert.equal(e.removed, false);
    assert.deepEqual(e.outcomes.filter((o) => o.status === 'delivered').map((o) => o.recipient), all.slice(0, MAX_TRANSACTIONS));
    assert.deepEqual(e.outcomes.filter((o) => o.status === 'temporary').map((o) => [o.recipient, o.reply]),
      all.slice(MAX_TRANSACTIONS).map((r) => [r, '452 4.5.3 Too many recipients']));
    assert.equal(from(one, 'many@origin.test').length, MAX_TRANSACTIONS);
    assert.equal(one.attempts.length, MAX_TRANSACTIONS);
    // postern queue retry: the next attempt sends the two left over, in two transactions.
    assert.deepEqual(await retryMessages(s.runtime.spool, [id]), [id]);
    await s.queue!.scan();
    const done = await s.nextAttempt((x) => x.id === id && x.attempt === 2, { past: true });
    assert.equal(done.removed, true, JSON.stringify(done.outcomes));
    assert.deepEqual(done.outcomes.map((o) => [o.recipient, o.status]), all.slice(MAX_TRANSACTIONS).map((r) => [r, 'delivered']));
    assert.deepEqual(from(one, 'many@origin.test').flatMap((m) => m.to), all);
  });

  test('which RCPT replies mean "too many recipients"', () => {
    const rcpt = (response: string) => isTooManyRecipients({ command: 'RCPT TO', response });
    assert.equal(rcpt('452 4.5.3 Error: too many recipients'), true); // Postfix
    assert.equal(rcpt('452 too many recipients'), true); // Exim, smtp-server without enhanced codes
    assert.equal(rcpt('552 5.5.3 Too many recipients'), true);
    assert.equal(rcpt('452 4.2.2 Mailbox full'), false);
    assert.equal(rcpt('452 4.3.1 Insufficient system storage'), false);
    assert.equal(rcpt('552 5.2.2 Mailbox full'), false);
    assert.equal(rcpt('451 4.5.3 Too many recipients'), false);
    assert.equal(isTooManyRecipients({ command: 'DATA', response: '452 4.5.3 Too many recipients' }), false);
  });
});

describe('predelivery-verdict-matrix', () => {
  // Every kind of predelivery verdict the API allows, and hostile ones, through the real queue runner to a real next
  // hop: what happens to the recipients is what docs/scripts.md (§ predelivery) says, or a temporary failure (fail
  // closed); nothing is delivered that the script did not ask to deliver. One script, the case named by the recipient
  // domain; one message per case, its first attempt only (no retry falls in the test).
  /** [case (the recipient domain's first label), the script's return, status, what the recipient's reply says]. */
  const CASES: Array<[string, string, 'delivered' | 'temporary' | 'permanent', RegExp]> = [
    ['plain', 'deliver()', 'delivered', /^250 /],
    ['declared', 'deliver({ tls: { clientCertificate: "laptop", ca: "corp" } })', 'delivered', /^250 /],
    ['cert-unknown', 'deliver({ tls: { clientCertificate: "nope" } })', 'temporary', /no client certificate named "nope"/],
    // The docs: a name that is not declared fails the delivery temporarily, whatever the mode would use of it.
    ['cert-unknown-plain', 'deliver({ tls: { mode: "none", clientCertificate: "nope" } })', 'temporary', /no client certificate named "nope"/],
    ['ca-unknown', 'deliver({ tls: { ca: "nope" } })', 'temporary', /no CA named "nope"/],
    ['cert-keypath', 'deliver({ tls: { clientCertificate: KEY_PATH } })', 'temporary', /no client certificate named/],
    ['cert-proto', 'deliver({ tls: { clientCertificate: "__proto__" } })', 'temporary', /no client certificate named "__proto__"/],
    ['dkim-unknown', 'deliver({ dkim: "nope" })', 'temporary', /DKIM/],
    ['reject', 'reject("no\\r\\n250 2.0.0 fine\\u0000", { code: 554 })', 'permanent', /^554 5\.7\.1 no 250 2\.0\.0 fine $/],
    ['defer', 'defer("later", { code: 452, enhanced: "4.2.2" })', 'temporary', /^452 4\.2\.2 later$/],
    ['reject-2xx', '({ verdict: "reject", code: 250 })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
    ['reject-text-250', '({ verdict: "reject", text: "250 OK" })', 'permanent', /^550 5\.7\.1 250 OK$/],
    ['defer-5xx', '({ verdict: "defer", code: 550 })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
    ['code-float', '({ verdict: "reject", code: 550.5 })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
    ['code-string', '({ verdict: "reject", code: "550" })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
    ['accept', '({ verdict: "accept" })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
    ['hold', '({ verdict: "accept", hold: "look" })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
    ['tls-string', '({ verdict: "deliver", tls: "verify" })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
    ['headers', '({ verdict: "deliver", headers: [] })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
    ['huge-text', 'defer("x".repeat(10 * 1024 * 1024))', 'temporary', /^451 4\.3\.0 /],
    ['rejects-verdict', 'Promise.reject(deliver())', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
    ['rejects-null', 'Promise.reject(null)', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
  ];

  let sink: Sink;
  let s: DeliveryServer;
  let keyPath: string;

  before(async () => {
    const pki = await makeTestPki();
    keyPath = pki.clients.alice.key;
    sink = await startSink();
    s = await startDeliveryServer({
      files: { 'laptop.crt': await readFile(pki.clients.alice.cert, 'utf8'), 'laptop.key': await readFile(pki.clients.alice.key, 'utf8'), 'corp.pem': await readFile(pki.ca.cert, 'utf8') },
      config: configYaml({
        listeners: [testListener('in')],
        localDomains: CASES.map(([name]) => `${name}.example`), // accepted from the test's plain client
        delivery: smarthostDelivery(sink.port, {
          tls: { mode: 'may' }, retrySchedule: [3600],
          clientCertificates: { laptop: { cert: './laptop.crt', key: './laptop.key' } },
          caFiles: { corp: './corp.pem' },
        }),
      }),
      scripts: {
        'predelivery.js': `
const KEY_PATH = ${JSON.stringify(keyPath)};
export default function (ctx) {
  const c = ctx.destination.domain.split('.')[0];
${CASES.map(([name, verdict]) => `  if (c === ${JSON.stringify(name)}) return ${verdict};`).join('\n')}
}`,
      },
    });
  });
  after(async () => {
    await s?.stop();
    await sink?.close();
  });

  test('each predelivery verdict does what the docs say, or fails the delivery temporarily', async () => {
    const ids = new Map<string, string>();
    for (const [name] of CASES) ids.set(name, await s.send('sender@example.com', [`user@${name}.example`]));
    const wrong: string[] = [];
    for (const [name, , status, reply] of CASES) {
      const e = await s.nextAttempt((a) => a.id === ids.get(name), { past: true });
      const o = e.outcomes[0]!;
      if (o.status !== status || !reply.test(o.reply)) wrong.push(`${name}: ${o.status} ${JSON.stringify(o.reply.slice(0, 160))}`);
    }
    // The bounce of the reject case (to the sender, at example.com) may be delivered too: not counted.
    const delivered = new Set(sink.messages.filter((m) => m.from !== '').map((m) => m.to[0]!.split('@')[1]!.split('.')[0]!));
    const expected = CASES.filter(([, , status]) => status === 'delivered').map(([name]) => name);
    assert.deepEqual(wrong, []);
    assert.deepEqual([...delivered].sort(), expected.sort(), 'the next hop got only what the script delivered');
    // An undeclared name is logged with the script that gave it, as a script's failure is.
    for (const name of ['no client certificate named "nope"', 'no CA named "nope"']) {
      assert.ok(s.logs.some((l) => l.level === 50 && String(l.msg).includes(`predelivery.js: ${name}`)), `logged: ${name}`);
    }
  });
});

describe('concurrency-reload', () => {
  // delivery.concurrency and perDestinationConcurrency are live on reload, and a limit raised by one lets in the
  // transactions waiting for a slot at once. The limiters read their limit when a slot was asked for or given back: with
  // every slot held by a next hop that reads slowly (a tarpit holds one for half an hour), raising the limit let in
  // nothing until one of them ended.
  for (const key of ['concurrency', 'perDestinationConcurrency'] as const) {
    test(`delivery.${key} raised by a reload lets in the transactions waiting for a slot at once`, { timeout: 120_000 }, async () => {
      const dir = await mkdtemp(join(tmpdir(), `postern-${key}-reload-`));
      const dataDir = join(dir, 'data');
      // The next hop does not answer EHLO: each transaction that got a slot holds it.
      const held: net.Socket[] = [];
      const peer = await startScriptedPeer({ ehlo: (s) => { held.push(s); return 'stop'; } });
      let s: DeliveryServer | null = null;
      try {
        const spool = new Spool(join(dataDir, 'spool'));
        await spool.init();
        await spoolMessages(spool, ['a@next.test', 'b@next.test']);
        spool.close();
        const config = (limit: number): string => configYaml({
          listeners: [testListener('in')],
          delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600],
            concurrency: 10, perDestinationConcurrency: 10, [key]: limit },
        });
        s = await startDeliveryServer({
          dataDir, config: config(1),
          resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
        });
        const server = s;
        await until('one transaction at the next hop, the other attempt under way (waiting for a slot)', () => held.length === 1 && server.queue!.activeCount === 2, { timeoutMs: 60_000 });

        await writeFile(join(s.dir, 'postern.yaml'), config(2));
        assert.equal((await s.reloader.reload('test')).ok, true);
        await until('both at the next hop, the first still held there', () => held.length === 2, { timeoutMs: 60_000 });
      } finally {
        await s?.stop();
        peer.close();
        await rm(dir, { recursive: true, force: true });
      }
    });
  }
});

describe('long-lines', () => {
  // Lines over RFC 5321's 1000 octets (998 and CRLF). A client may send them, and Postern takes them as Postfix does;
  // but it relayed them as they were, and a next hop that holds to the limit refuses such a message after its dot
  // (Exim will not relay it at all), so a message Postern had accepted bounced. Now, as Postfix's
  // smtp_line_length_limit, a longer line is broken on the way out by a line end and a space (before a space of the
  // line when it has one, never inside a UTF-8 character): every line on the wire is within 998 octets, a header
  // stays the same field with the same value, and the DKIM signature Postern adds verifies. The spool keeps the
  // message as it came. The next hop is a raw socket that refuses a line over 998 octets, as such hosts do.
  const setup = useSigningDelivery({ com: { type: 'rsa', domain: 'example.com', selector: 'sel', senderDomains: ['example.com'] } }, undefined,
    () => startRawSink({ maxLineOctets: 998, eightBitMime: true }));

  /** What was sent: the message on the wire for queue id `id`, dot-stuffing undone. */
  async function sent(id: string): Promise<string> {
    const e = await setup.server.nextAttempt((x) => x.id === id, { past: true });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    const wire = setup.sink.messages.find((m) => m.includes(` id ${id}`))!;
    for (const line of wire.toString('latin1').split('\r\n')) assert.ok(line.length <= 998 + (line.startsWith('..') ? 1 : 0), `a line of ${line.length} octets was sent`);
    assert.deepEqual(await verifyDkim(wire, setup.records), [true], 'the DKIM signature Postern added verifies');
    return wire.toString('latin1').replace(/^\./gm, '');
  }

  const RECIPIENTS = Array.from({ length: 200 }, (_, i) => `user${i}@example.net`);

  test('a header of 200 addresses and a body line of 2500 octets: delivered, every line within 998 octets, the header the same field', async () => {
    const body = `${'x'.repeat(2500)}\r\n`;
    const id = await setup.server.send('a@example.com', ['b@example.net'], `From: <a@example.com>\r\nTo: ${RECIPIENTS.join(', ')}\r\nSubject: long\r\n\r\n${body}`);
    const text = await sent(id);
    const reader = new HeaderReader(1 << 20);
    reader.push(Buffer.from(text, 'latin1'));
    const to = reader.headers().find(([name]) => name === 'To')![1];
    assert.deepEqual(to.split(/,\s*/), RECIPIENTS, 'unfolded, the field holds the same addresses');
    const lines = text.slice(text.indexOf('\r\n\r\n') + 4).split('\r\n');
    assert.deepEqual(lines.map((l) => l.length), [998, 998, 506, 0], 'the body line cut at the limit, each continuation with a space in front');
    assert.equal(lines.map((l, i) => (i ? l.slice(1) : l)).join(''), 'x'.repeat(2500));
    const { message } = await setup.server.runtime.spool.readForDelivery(id).catch(() => ({ message: null }));
    assert.equal(message, null, 'delivered and removed');
  });

  test('a long line of UTF-8 text is never cut inside a character', async () => {
    const line = 'é'.repeat(1500); // 3000 octets
    const id = await setup.server.send('a@example.com', ['b@example.net'], `From: <a@example.com>\r\nSubject: utf-8\r\n\r\n${line}\r\n`);
    const text = Buffer.from(await sent(id), 'latin1');
    const body = text.subarray(text.indexOf('\r\n\r\n') + 4).toString('utf8');
    assert.ok(!body.includes('\ufffd'), 'every character whole');
    assert.equal(body.split('\r\n').map((l, i) => (i ? l.slice(1) : l)).join(''), `${line}`);
  });

  test('lineLengthLimit 0: lines go out as they are (and the host that holds to the limit refuses them)', async () => {
    const t = await startDeliveryServer({
      config: configYaml({ hostname: 'postern.test', listeners: [testListener('in')], delivery: smarthostDelivery(setup.sink.port, { retrySchedule: [3600], lineLengthLimit: 0 }) }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      const id = await t.send('a@example.com', ['b@example.net'], `Subject: as is\r\n\r\n${'y'.repeat(1200)}\r\n`);
      const e = await t.nextAttempt((x) => x.id === id, { past: true });
      assert.equal(e.outcomes[0]!.status, 'permanent');
      assert.match(e.outcomes[0]!.reply, /500 5\.5\.2 Line too long/);
    } finally {
      await t.stop();
    }
  });

  test('lineLengthLimit below 78 (but 0) is a configuration error naming the file and line', () => {
    const yaml = configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(25, { lineLengthLimit: 10 }) });
    assert.throws(() => parseConfig(yaml, '/etc/postern.yaml', '/etc'),
      /\/etc\/postern\.yaml:\d+:\d+: delivery\.lineLengthLimit: expected 0 \(lines sent as they are\) or at least 78/);
    assert.equal(parseConfig(yaml.replace('lineLengthLimit: 10', 'lineLengthLimit: 0'), '/etc/postern.yaml', '/etc').config.delivery.lineLengthLimit, 0);
  });

  /** CPU milliseconds `f` takes (a guard only: the cost it guards against is minutes). */
  function cpuMs(f: () => void): number {
    const start = process.cpuUsage();
    f();
    const used = process.cpuUsage(start);
    return (used.user + used.system) / 1000;
  }

  /** Every line of `out` (ended by LF or a bare CR) is at most `limit` octets. */
  function longestLine(out: Buffer): number {
    let longest = 0;
    for (const line of out.toString('latin1').split(/\r\n|\r|\n/)) longest = Math.max(longest, line.length);
    return longest;
  }

  test('long lines cut by bare CRs, one LF at the end: each byte is looked at once, not the message once per long line', () => {
    // 8 MB of 80-octet lines ended by bare CRs, over a limit of 78: the search for each line's LF ran to the
    // message's end and the window's back to its start (about 95 s here), in the queue process, whose watchdog kills it at 1 s.
    const message = Buffer.from(`${'x'.repeat(80)}\r`.repeat(100_000) + '\n', 'latin1');
    let out: Buffer = Buffer.alloc(0);
    const ms = cpuMs(() => { out = withLinesWithin(message, 78); });
    assert.ok(ms < 5000, `${ms} ms of CPU`);
    assert.equal(longestLine(out), 78);
    assert.equal(out.length, message.length + 100_000 * 3, 'each line cut once (CR LF and a space)');
  });

  test('a line of blanks only, megabytes long: each cut looks back over its room once', () => {
    // Each cut searched its room again for every blank of the run it was in: the room's square per cut (some
    // 20 s for 8 MB at a limit of 1,000,000; at the default 998 some 90 ns an octet, 2 s for a 25 MB line).
    const message = Buffer.from(`x${' '.repeat(8_000_000)}\r\n`, 'latin1');
    let out: Buffer = Buffer.alloc(0);
    const ms = cpuMs(() => { out = withLinesWithin(message, 1_000_000); });
    assert.ok(ms < 5000, `${ms} ms of CPU`);
    assert.ok(longestLine(out) <= 1_000_000);
    assert.equal(out.toString('latin1').replace(/\r\n /g, ''), message.toString('latin1'), 'only cut, nothing lost');
  });
});
