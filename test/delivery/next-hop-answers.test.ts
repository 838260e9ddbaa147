// What a next hop answers and how delivery takes it: hostile and malformed replies, a refused greeting or EHLO,
// its extensions, the reply to DATA and to the end of data (ambiguous, late, smuggled), hostile DNS and TLS, the
// longest timeouts. One file for what were several (one test process and one load of the engine instead of one
// each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { fakeResolver, startDeliveryServer, parseDsn, type DeliveryServer } from '../helpers/delivery-server.ts';
import { until } from '../helpers/wait.ts';
import { configYaml, testListener, smarthostDelivery } from '../helpers/config.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';
import { createResolver, MAX_CACHED } from '../../engine/delivery/dns.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startRawSink, type RawSink } from '../helpers/raw-sink.ts';

describe('hostile-next-hop', () => {
  // A next hop that never finishes a reply (a byte now and then: continuation lines at EHLO, "25" and then one
  // digit at a time after the message) used to hold its delivery, and its slot of delivery.concurrency, for
  // ever: nodemailer's socket timeout counts only time without any byte. Any domain's MX can do this, so two
  // such hosts starved every other delivery with concurrency 2. Each reply now has commandTimeoutMs to be
  // complete: the two are deferred (the one whose message went out says it may be delivered twice), the
  // healthy domain is delivered, and the server stops without waiting for the hosts that are still dripping.
  type Drip = 'at-ehlo' | 'after-data';

  /** A next hop on `host:port` that drips a reply that never ends, at EHLO or after the message. */
  async function startDrippingPeer(host: string, port: number, where: Drip): Promise<{ dripping: number; close(): void }> {
    const state = { dripping: 0 };
    const drip = (s: net.Socket, first: string, next: string): void => {
      state.dripping++;
      s.write(first);
      const timer = setInterval(() => s.write(next), 100);
      s.once('close', () => clearInterval(timer));
    };
    const peer = await startScriptedPeer({
      ehlo: (s) => (where === 'at-ehlo' ? (drip(s, '250-peer\r\n', '250-still here\r\n'), 'stop') : undefined),
      endOfData: (s) => (where === 'after-data' ? (drip(s, '25', '0'), 'stop') : undefined),
    }, host, port);
    return { get dripping() { return state.dripping; }, close: peer.close };
  }

  test('next hops that never finish a reply are timed out per reply; they cannot hold every delivery slot', async () => {
    const sink = await startSink();
    // The MX port is one setting: the dripping hosts listen on other loopback addresses, same port.
    const ehlo = await startDrippingPeer('127.0.0.3', sink.port, 'at-ehlo');
    const data = await startDrippingPeer('127.0.0.4', sink.port, 'after-data');
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, concurrency: 2, retrySchedule: [3600], commandTimeoutMs: 1500, endOfDataTimeoutMs: 1500 },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({
        'drip-ehlo.test': [{ exchange: 'mx.drip-ehlo.test', priority: 10 }],
        'drip-data.test': [{ exchange: 'mx.drip-data.test', priority: 10 }],
        'healthy.test': [{ exchange: 'mx.healthy.test', priority: 10 }],
      }, {
        'mx.drip-ehlo.test': ['127.0.0.3'],
        'mx.drip-data.test': ['127.0.0.4'],
        'mx.healthy.test': ['127.0.0.1'],
      }),
    });
    try {
      const first = await s.send('a@origin.test', ['x@drip-ehlo.test']);
      const second = await s.send('a@origin.test', ['y@drip-data.test']);
      // Both slots taken by dripping hosts before the healthy message comes in.
      await until('both dripping hosts reached', () => ehlo.dripping >= 1 && data.dripping >= 1, { timeoutMs: 60_000 });
      const healthy = await s.send('a@origin.test', ['z@healthy.test'], 'Subject: healthy\r\n\r\nbody\r\n');
      await sink.waitFor(1, 60_000);
      assert.match(sink.messages[0]!.data.toString(), /Subject: healthy/);
      await s.nextAttempt((e) => e.id === healthy && e.removed, { timeoutMs: 60_000, past: true });
      const a = await s.nextAttempt((e) => e.id === first, { timeoutMs: 60_000, past: true });
      const b = await s.nextAttempt((e) => e.id === second, { timeoutMs: 60_000, past: true });
      assert.equal(a.outcomes[0]!.status, 'temporary');
      assert.match(a.outcomes[0]!.reply, /Timeout/);
      assert.equal(b.outcomes[0]!.status, 'temporary');
      assert.match(b.outcomes[0]!.reply, /lost connection after the end of the message, before its reply \(Timeout\).*more than once/);
    } finally {
      await s.stop();
      ehlo.close();
      data.close();
      await sink.close();
    }
  });

  test('stopping the server does not wait for a next hop that is still dripping its EHLO reply', async () => {
    const sink = await startSink();
    const ehlo = await startDrippingPeer('127.0.0.3', sink.port, 'at-ehlo');
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        // A reply limit far beyond the test's guard: only closing the connection being set up ends it.
        delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600], commandTimeoutMs: 3_600_000 },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'drip-ehlo.test': [{ exchange: 'mx.drip-ehlo.test', priority: 10 }] }, { 'mx.drip-ehlo.test': ['127.0.0.3'] }),
    });
    try {
      await s.send('a@origin.test', ['x@drip-ehlo.test']);
      await until('the dripping host reached', () => ehlo.dripping >= 1, { timeoutMs: 60_000 });
      await s.stop(); // hangs (test timeout) if the connection being opened is left to drip
    } finally {
      ehlo.close();
      await sink.close();
    }
  });
});

describe('hostile-replies', () => {
  // What a next hop says ends up in our state files, logs, the previousErrors a predelivery script is given and
  // the bounces we send: a reply of one line of nearly 1 MB (nodemailer's limit per reply) was kept whole —
  // every attempt's state file carried up to 20 of them, each log line one, and the DSN a line far past RFC
  // 5322's 998 (a next hop refuses such a bounce: lost). A refusal at the greeting or EHLO was kept with its
  // control characters (an ESC sequence for the operator's terminal, in the log and in the bounce's text).
  // Each reply is now one line of at most 1000 characters, without control characters, wherever it goes.
  const HUGE = 'x'.repeat(900_000);
  const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

  test('a next hop\'s huge or control-laden replies are kept as one bounded line in state, logs and bounces', async () => {
    const sink = await startSink();
    const peer = await startScriptedPeer({
      rcpt: (s) => {
        s.write(`450 4.2.0 ${HUGE}\r\n`);
        return 'answered';
      },
    }, '127.0.0.6', sink.port);
    const greeting = await startScriptedPeer({
      ehlo: (s) => {
        s.write(`421-4.7.0 \x1b]0;owned\x07 go away ${'y'.repeat(5000)}\r\n421 4.7.0 \x1b[2J bye ${HUGE}\r\n`);
        return 'answered';
      },
    }, '127.0.0.7', sink.port);
    const refusing = await startScriptedPeer({
      rcpt: (s) => {
        s.write(`550 5.1.1 \x1b[31m ${HUGE}\r\n`);
        return 'answered';
      },
    }, '127.0.0.8', sink.port);
    const s = await startDeliveryServer({
      config: configYaml({
        hostname: 'postern.test',
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({
        'huge.test': [{ exchange: 'mx.huge.test', priority: 10 }],
        'greeting.test': [{ exchange: 'mx.greeting.test', priority: 10 }],
        'refusing.test': [{ exchange: 'mx.refusing.test', priority: 10 }],
        'origin.test': [{ exchange: 'mx.origin.test', priority: 10 }],
      }, { 'mx.huge.test': ['127.0.0.6'], 'mx.greeting.test': ['127.0.0.7'], 'mx.refusing.test': ['127.0.0.8'], 'mx.origin.test': ['127.0.0.1'] }),
    });
    try {
      const id = await s.send('a@origin.test', ['x@huge.test', 'y@greeting.test', 'z@refusing.test']);
      const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 60_000, past: true });
      for (const o of e.outcomes) {
        assert.ok(o.reply.length <= 1100, `${o.recipient}: a reply of ${o.reply.length} characters kept`);
        assert.doesNotMatch(o.reply, CONTROL, `${o.recipient}: control characters kept: ${JSON.stringify(o.reply.slice(0, 200))}`);
      }
      const state = await s.spools.readState(id);
      assert.ok(state, 'deferred recipients left: a state');
      assert.ok(JSON.stringify(state).length < 10_000, `state of ${JSON.stringify(state).length} characters`);
      for (const l of s.logs.filter((x) => x.id === id)) assert.ok(JSON.stringify(l).length < 10_000, `a log line of ${JSON.stringify(l).length} characters`);
      // The bounce goes to the sender's MX: the sink, on the peers' port at 127.0.0.1.
      const [bounce] = await sink.waitFor(1, 60_000);
      const raw = bounce!.data;
      for (const line of raw.toString('latin1').split('\r\n')) {
        assert.ok(Buffer.byteLength(line, 'latin1') <= 998, `a bounce line of ${line.length} bytes`);
        assert.doesNotMatch(line, CONTROL, `control characters in the bounce: ${JSON.stringify(line.slice(0, 200))}`);
      }
      assert.deepEqual(parseDsn(raw).recipients.map((r) => r['final-recipient']), ['rfc822; z@refusing.test']);
    } finally {
      await s.stop();
      peer.close();
      greeting.close();
      refusing.close();
      await sink.close();
    }
  });
});

describe('malformed-replies', () => {
  // A reply that is not in SMTP's form is no verdict: a multi-line reply whose lines carry different reply codes (RFC
  // 5321 §4.2.1: "the reply code on each of the lines MUST be the same"), a continuation ended by a line without one, a
  // reply with no reply code at all. nodemailer and the outcome took the first line's code (nodemailer its first
  // character): "250-ok" then "550 5.1.1 no such user" to RCPT made that recipient accepted, and the 250 to the final
  // dot recorded it delivered, though the next hop (Postfix reads the last line's code) had refused it and never
  // delivered to it: the message lost for that recipient, no bounce. "250-queued" then "451 failed" to the final dot, or
  // "2.1.5 ok" to RCPT, likewise. Such a reply is deferred, whichever way it is malformed.
  /** A server whose queue relays to the scripted next hop on `port`, retrying after 0.1 s. */
  function relayingTo(port: number): ReturnType<typeof startDeliveryServer> {
    return startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(port, { retrySchedule: [0.1] }) }),
    });
  }

  const MALFORMED: Record<string, [string, string]> = {
    'a 250 line, then a 550 last line': ['250-2.1.5 ok\r\n550 5.1.1 no such user\r\n', 'its lines do not share one reply code): 250-2.1.5 ok 550 5.1.1 no such user'],
    'a 550 line, then a 250 last line': ['550-5.1.1 no such user\r\n250 2.1.5 ok\r\n', 'its lines do not share one reply code): 550-5.1.1 no such user 250 2.1.5 ok'],
    'a 250 line, then a line without a code': ['250-2.1.5 ok\r\nno such user\r\n', 'a line without its reply code): 250-2.1.5 ok no such user'],
    'an enhanced code without a reply code': ['2.1.5 ok\r\n', 'no reply code): 2.1.5 ok'],
    'a code of four digits': ['2500 ok\r\n', 'no reply code): 2500 ok'],
  };

  for (const [name, [reply, logged]] of Object.entries(MALFORMED)) {
    test(`RCPT answered with ${name}: that recipient is deferred, not counted delivered by the message's 250; the others are delivered once`, async () => {
      let mixedOnce = true;
      const peer = await startScriptedPeer({
        rcpt: (s, line) => {
          if (/<odd@/.test(line) && mixedOnce) { mixedOnce = false; s.write(reply); return 'answered'; }
        },
      });
      const s = await relayingTo(peer.port);
      try {
        const id = await s.send('a@example.test', ['b@example.test', 'odd@example.test']);
        const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 30_000, past: true });
        const by = new Map(first.outcomes.map((o) => [o.recipient, o]));
        assert.equal(by.get('b@example.test')?.status, 'delivered');
        assert.equal(by.get('odd@example.test')?.status, 'temporary', `odd: ${JSON.stringify(by.get('odd@example.test'))}`);
        assert.equal(by.get('odd@example.test')!.reply, `malformed reply (${logged}`);
        const done = await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
        assert.deepEqual(done.outcomes.map((o) => `${o.recipient} ${o.status}`), ['odd@example.test delivered'], 'the retry is for the deferred one only');
        const deferred = s.logs.find((l) => l.id === id && l.status === 'deferred' && (l.to as string[]).includes('odd@example.test'));
        assert.ok(deferred, `the deferral is logged with its reason: ${JSON.stringify(s.logs.filter((l) => l.id === id))}`);
      } finally {
        await s.stop();
        peer.close();
      }
    });
  }

  for (const [name, [reply, logged]] of Object.entries<[string, string]>({
    'a 250 line, then a 451 last line': ['250-2.0.0 queued\r\n451 4.3.0 failed to write the message\r\n', 'its lines do not share one reply code: 250-2.0.0 queued 451 4.3.0 failed to write the message'],
    'a 451 line, then a 250 last line': ['451-4.3.0 failed\r\n250 2.0.0 queued\r\n', 'its lines do not share one reply code: 451-4.3.0 failed 250 2.0.0 queued'],
    'a 250 line, then a line without a code': ['250-2.0.0 queued\r\nfailed\r\n', 'a line without its reply code: 250-2.0.0 queued failed'],
    'no reply code': ['2xx garbage\r\n', 'no reply code: 2xx garbage'],
  })) {
    test(`the final dot answered with ${name}: retried, and the deferral says it may be delivered twice`, async () => {
      let messages = 0;
      const peer = await startScriptedPeer({
        endOfData: (s) => { if (messages++ === 0) { s.write(reply); return 'answered'; } },
      });
      const s = await relayingTo(peer.port);
      try {
        const id = await s.send('a@example.test', ['b@example.test']);
        const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 30_000, past: true });
        assert.equal(first.outcomes[0]?.status, 'temporary', JSON.stringify(first.outcomes));
        assert.match(first.outcomes[0]!.reply, /: malformed reply to the end of the message \((.*)\): the next hop may have it, so it may be delivered more than once$/);
        assert.equal(/end of the message \((.*)\): the next hop/.exec(first.outcomes[0]!.reply)?.[1], logged);
        await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
        assert.equal(messages, 2);
        assert.equal(s.logs.filter((l) => l.id === id && l.status === 'sent').length, 1);
      } finally {
        await s.stop();
        peer.close();
      }
    });
  }

  test('every recipient refused, one with mixed codes: the plain refusal keeps its 550 (bounced), the mixed one is deferred', async () => {
    let mixedOnce = true;
    const peer = await startScriptedPeer({
      rcpt: (s, line) => {
        if (/<gone@/.test(line)) { s.write('550 5.1.1 no such user\r\n'); return 'answered'; }
        if (/<odd@/.test(line) && mixedOnce) { mixedOnce = false; s.write('250-2.1.5 ok\r\n550 5.1.1 no such user\r\n'); return 'answered'; }
      },
    });
    const s = await relayingTo(peer.port);
    try {
      const id = await s.send('a@example.test', ['gone@example.test', 'odd@example.test']);
      const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 30_000, past: true });
      assert.deepEqual(first.outcomes.map((o) => `${o.recipient} ${o.status} ${o.reply}`), [
        'gone@example.test permanent 550 5.1.1 no such user',
        'odd@example.test temporary malformed reply (its lines do not share one reply code): 250-2.1.5 ok 550 5.1.1 no such user',
      ]);
      assert.ok(first.bounceId, 'the refused recipient is bounced to the sender');
      const done = await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
      assert.deepEqual(done.outcomes.map((o) => `${o.recipient} ${o.status}`), ['odd@example.test delivered']);
    } finally {
      await s.stop();
      peer.close();
    }
  });

  test('EHLO answered with mixed codes: the session fails (deferred, with the reply), not taken for an EHLO accepted', async () => {
    let ehlos = 0;
    const peer = await startScriptedPeer({
      ehlo: (s) => { if (ehlos++ === 0) { s.write('250-peer\r\n250-8BITMIME\r\n550 5.7.1 go away\r\n'); return 'answered'; } },
    });
    const s = await relayingTo(peer.port);
    try {
      const id = await s.send('a@example.test', ['b@example.test']);
      const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 30_000, past: true });
      assert.equal(first.outcomes[0]?.status, 'temporary', JSON.stringify(first.outcomes));
      assert.match(first.outcomes[0]!.reply, /EHLO failed: Malformed reply to EHLO \(its lines do not share one reply code: 250-peer 250-8BITMIME 550 5\.7\.1 go away\)$/);
      await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
    } finally {
      await s.stop();
      peer.close();
    }
  });

  test('MAIL answered with mixed codes: the transaction is deferred (the reply logged), the message not sent on it', async () => {
    let mails = 0;
    let messages = 0;
    const peer = await startScriptedPeer({
      mail: (s) => { if (mails++ === 0) { s.write('250-2.1.0 ok\r\n550 5.7.1 sender refused\r\n'); return 'answered'; } },
      endOfData: () => { messages++; },
    });
    const s = await relayingTo(peer.port);
    try {
      const id = await s.send('a@example.test', ['b@example.test']);
      const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 30_000, past: true });
      assert.equal(first.outcomes[0]?.status, 'temporary', JSON.stringify(first.outcomes));
      assert.match(first.outcomes[0]!.reply, /MAIL FROM failed: Mail command failed \(its lines do not share one reply code: 250-2\.1\.0 ok 550 5\.7\.1 sender refused\)$/);
      await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
      assert.equal(messages, 1, 'sent once, by the retry');
    } finally {
      await s.stop();
      peer.close();
    }
  });

  test('a greeting with no reply code, then one with mixed codes: each a protocol error of that host (deferred, 4.5.0, named so), the destination not taken for unreachable', async () => {
    // Postfix: a malformed greeting is that host's protocol error, the mail tried again later (and the next MX host
    // now). It was "connection failed: Invalid greeting…" (4.4.1), and suspended the destination as one that answers nothing.
    const greetings = ['peer ESMTP ready\r\n', '220-peer ESMTP\r\n554 5.7.1 go away\r\n'];
    const peer = await startScriptedPeer({
      greeting: (s) => {
        const odd = greetings.shift();
        if (odd === undefined) return undefined;
        s.write(odd);
        return 'answered';
      },
    });
    const s = await relayingTo(peer.port);
    try {
      const id = await s.send('a@example.test', ['b@example.test']);
      const replies: string[] = [];
      for (let attempt = 1; attempt <= 2; attempt++) {
        const e = await s.nextAttempt((a) => a.id === id && a.attempt === attempt, { timeoutMs: 30_000, past: true });
        assert.deepEqual([e.outcomes[0]?.status, e.outcomes[0]?.enhanced], ['temporary', '4.5.0'], JSON.stringify(e.outcomes));
        replies.push(e.outcomes[0]!.reply.replace(/^\S+: /, ''));
      }
      assert.deepEqual(replies, [
        'protocol error: malformed greeting (no reply code: peer ESMTP ready)',
        'protocol error: malformed greeting (its lines do not share one reply code: 220-peer ESMTP 554 5.7.1 go away)',
      ]);
      await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
      assert.deepEqual(s.logs.filter((l) => /delivery temporarily suspended/.test(String(l.msg))).map((l) => l.msg), [], 'a host that answered is not unreachable');
    } finally {
      await s.stop();
      peer.close();
    }
  });
});

describe('hostile-tls-next-hop', () => {
  // Outbound TLS against hostile or misconfigured next hops: what name is sent and checked, what a failed or
  // stripped STARTTLS does to a message whose route requires TLS, and which certificate each connection presents.
  let pki: TestPki;
  let sink: Sink;
  /** Ends the connection right after a handshake without a client certificate its CA issued (as Postern's requireVerifiedCertificate does). */
  let strict: Sink;
  let strictImplicit: Sink;
  let s: DeliveryServer;
  /** A next hop that does not offer STARTTLS and refuses it (what a stripping attacker leaves). */
  let stripped: RawPeer;
  /** Answers STARTTLS with 220 followed, in the same packet, by plaintext replies an attacker slipped in. */
  let injecting: RawPeer;

  /**
   * No script here runs long: a limit a loaded machine cannot outrun. At the default 100 ms, a predelivery call
   * (the first, on a fresh isolate) came back as a script failure under load: 'temporary', 451 4.3.0 Temporary policy
   * failure, where the test expected 'delivered'.
   */
  const SCRIPTS_UNHURRIED = { timeoutMs: 10_000 };

  before(async () => {
    pki = await makeTestPki();
    // Its certificate names localhost and 127.0.0.1; it asks for (and records) a client certificate.
    sink = await startSink({ tls: 'starttls', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert });
    strict = await startSink({ tls: 'starttls', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert, requireClientCertificate: true });
    stripped = await startRawPeer({ offerStartTls: false });
    injecting = await startRawPeer({
      offerStartTls: true,
      injectAfter220: '250-injected\r\n250 8BITMIME\r\n250 2.1.0 injected\r\n250 2.1.5 injected\r\n354 injected\r\n250 2.0.0 injected-queued\r\n',
    });
    strictImplicit = await startSink({ tls: 'implicit', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert, requireClientCertificate: true });
    const verify = { mode: 'verify', ca: 'test-ca' };
    const routes: Record<string, unknown> = {
      'sni-ip.example': { host: '127.0.0.1', port: sink.port, tls: { ...verify, serverName: '127.0.0.1' } },
      'sni-other-ip.example': { host: '127.0.0.1', port: sink.port, tls: { ...verify, serverName: '127.0.0.2' } },
      // One next hop, five identities: each connection must present the one its message's verdict chose.
      'as-alice.example': { tls: { mode: 'encrypt', clientCertificate: 'alice' } },
      'as-bob.example': { tls: { mode: 'encrypt', clientCertificate: 'bob' } },
      'anonymous.example': { tls: { mode: 'encrypt', clientCertificate: null } },
      'by-name.example': { tls: { ...verify, clientCertificate: 'alice', serverName: 'localhost' } },
      'bob-by-name.example': { tls: { ...verify, clientCertificate: 'bob', serverName: 'localhost' } },
      'expired.example': { port: strict.port, tls: { mode: 'encrypt', clientCertificate: 'expired' } },
      'stranger.example': { port: strict.port, tls: { mode: 'encrypt', clientCertificate: 'stranger' } },
      'stranger-implicit.example': { port: strictImplicit.port, implicitTls: true, tls: { mode: 'encrypt', clientCertificate: 'stranger' } },
      'stripped.example': { port: stripped.port, tls: { mode: 'encrypt', clientCertificate: 'alice' } },
      'injected.example': { port: injecting.port, tls: { mode: 'encrypt', clientCertificate: 'alice' } },
      'alice-implicit.example': { port: strictImplicit.port, implicitTls: true, tls: { mode: 'encrypt', clientCertificate: 'alice' } },
    };
    s = await startDeliveryServer({
      files: {
        'expired.crt': await readFile(pki.clients.expired.cert, 'utf8'), 'expired.key': await readFile(pki.clients.expired.key, 'utf8'),
        'stranger.crt': await readFile(pki.clients.stranger.cert, 'utf8'), 'stranger.key': await readFile(pki.clients.stranger.key, 'utf8'),
        'alice.crt': await readFile(pki.clients.alice.cert, 'utf8'), 'alice.key': await readFile(pki.clients.alice.key, 'utf8'),
        'bob.crt': await readFile(pki.clients.bob.cert, 'utf8'), 'bob.key': await readFile(pki.clients.bob.key, 'utf8'),
      },
      config: configYaml({
        listeners: [testListener('in')],
        sandbox: SCRIPTS_UNHURRIED,
        delivery: {
          route: { smarthost: { host: '127.0.0.1', port: sink.port } }, retrySchedule: [3600], connectTimeoutMs: 10_000,
          caFiles: { 'test-ca': pki.ca.cert },
          clientCertificates: Object.fromEntries(['alice', 'bob', 'expired', 'stranger'].map((c) => [c, { cert: `./${c}.crt`, key: `./${c}.key` }])),
        },
      }),
      scripts: {
        'rcptto.ts': 'export default () => accept();',
        'predelivery.ts': `
const ROUTES: Record<string, PredeliveryVerdict> = ${JSON.stringify(routes)};
export default (ctx: PredeliveryContext) => ROUTES[ctx.destination.domain] ? deliver(ROUTES[ctx.destination.domain] as never) : undefined;
`,
      },
    });
  });
  after(async () => {
    await s?.stop();
    await sink?.close();
    await strict?.close();
    await strictImplicit?.close();
    stripped?.close();
    injecting?.close();
  });

  /** Send to r@<domain>; the first attempt's outcome and what the next hop received for it. */
  async function attempt(domain: string): Promise<{ status: string; reply: string; received: Sink['messages'][number] | undefined }> {
    const id = await s.send('sender@example.org', [`r@${domain}`]);
    const e = await s.nextAttempt((x) => x.id === id, { past: true });
    const received = [sink, strict, strictImplicit].flatMap((k) => k.messages).find((m) => m.to[0] === `r@${domain}`);
    return { status: e.outcomes[0]!.status, reply: e.outcomes[0]!.reply, received };
  }

  test('a serverName that is an IP address is checked against the certificate, and never sent as SNI', async () => {
    const r = await attempt('sni-ip.example');
    assert.equal(r.status, 'delivered', r.reply);
    assert.equal(r.received?.tls, true);
    assert.equal(r.received?.servername, null, 'RFC 6066 §3: no literal IP address in SNI');
    // The name checked is the one the script gave, not the address connected to (which the certificate does name).
    const other = await attempt('sni-other-ip.example');
    assert.equal(other.status, 'temporary', other.reply);
    assert.match(other.reply, /TLS failed: .*127\.0\.0\.2/);
    assert.equal(other.received, undefined);
  });

  test('a pooled connection is reused only for the identity it presents: certificate, none, and server name', async () => {
    // Five identities to one next hop, one more than perDestinationConcurrency (4) lets stay open: the fifth closes
    // one idle connection (the oldest identity's) to make room, and the others are then reused.
    const order = ['as-alice', 'as-bob', 'anonymous', 'by-name', 'bob-by-name', 'as-bob', 'anonymous', 'by-name', 'as-alice'];
    const got: Array<Sink['messages'][number]> = [];
    for (const d of order) {
      const r = await attempt(`${d}.example`);
      assert.equal(r.status, 'delivered', `${d}: ${r.reply}`);
      got.push(sink.messages.filter((m) => m.to[0] === `r@${d}.example`).at(-1)!);
    }
    const alice = pki.clients.alice.fingerprintSha256Colon;
    const bob = pki.clients.bob.fingerprintSha256Colon;
    assert.deepEqual(got.map((m) => m.clientFingerprint), [alice, bob, null, alice, bob, bob, null, alice, alice]);
    assert.deepEqual(got.map((m) => m.servername), [null, null, null, 'localhost', 'localhost', null, null, 'localhost', null]);
    // Each identity's later message went on its own earlier connection (so the fingerprints above were read off
    // pooled connections too); making room for the fifth closed one connection, not every idle one.
    const session = (i: number): string => got[i]!.sessionId;
    assert.deepEqual([session(5), session(6), session(7)], [session(1), session(2), session(3)], 'bob, anonymous and by-name reused');
    assert.notEqual(session(8), session(0), 'alice\'s idle connection made the room');
    assert.equal(new Set(got.map((m) => m.sessionId)).size, 6);
  });

  test('a next hop that drops the connection after the handshake (STARTTLS or implicit TLS): a TLS failure that names the certificate offered, and its expiry', async () => {
    // The next hop says nothing (no alert, no reply): which certificate it saw is only known here.
    const expired = await attempt('expired.example');
    assert.equal(expired.status, 'temporary', expired.reply);
    assert.match(expired.reply, /: TLS failed: .* \(client certificate "expired", which expired on 2021-01-01T00:00:00\.000Z\)$/);
    for (const domain of ['stranger.example', 'stranger-implicit.example']) {
      const r = await attempt(domain);
      assert.equal(r.status, 'temporary', r.reply);
      assert.match(r.reply, /: TLS failed: .* \(client certificate "stranger"\)$/, domain);
      assert.equal(r.received, undefined);
    }
    // A refused certificate is no dead destination: the next message, with a certificate it takes, goes through
    // at once (on implicit TLS the refusal was taken for an unreachable host, and the host suspended).
    const alice = await attempt('alice-implicit.example');
    assert.equal(alice.status, 'delivered', alice.reply);
    assert.equal(alice.received?.clientFingerprint, pki.clients.alice.fingerprintSha256Colon);
    assert.ok(!s.logs.some((l) => String(l.msg).includes('delivery temporarily suspended')), 'no destination suspended');
  });

  test('STARTTLS stripped where the route requires TLS: deferred, nothing of the message sent, no certificate offered', async () => {
    const r = await attempt('stripped.example');
    assert.equal(r.status, 'temporary', r.reply);
    assert.match(r.reply, /TLS failed: .*502 5\.5\.1/);
    assert.deepEqual(stripped.lines.filter((l) => !/^(EHLO|STARTTLS|QUIT)\b/i.test(l)), [], 'no MAIL FROM, RCPT TO or DATA in plaintext');
    assert.equal(stripped.handshakes, 0);
  });

  test('plaintext slipped in after the 220 to STARTTLS is discarded, not read as the replies of the TLS session', async () => {
    const r = await attempt('injected.example');
    assert.equal(r.status, 'delivered', r.reply);
    assert.match(r.reply, /^250 2\.0\.0 real-queued/, 'the verdict is the next hop\'s own, over TLS');
    assert.equal(injecting.handshakes, 1);
    assert.equal(injecting.messages, 1);
  });

  test('a smarthost written as an absolute name (trailing dot) is sent in SNI without the dot (RFC 6066 §3)', async () => {
    const dotted = await startDeliveryServer({
      resolver: fakeResolver({}, { 'localhost.': ['127.0.0.1'] }),
      config: configYaml({
        listeners: [testListener('in')],
        sandbox: SCRIPTS_UNHURRIED,
        delivery: { route: { smarthost: { host: 'localhost.', port: sink.port } }, tls: { mode: 'verify', ca: 'test-ca' }, caFiles: { 'test-ca': pki.ca.cert } },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      const id = await dotted.send('sender@example.org', ['r@dotted.example']);
      const e = await dotted.nextAttempt((x) => x.id === id, { past: true });
      assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
      assert.equal(sink.messages.find((m) => m.to[0] === 'r@dotted.example')?.servername, 'localhost');
    } finally {
      await dotted.stop();
    }
  });

  test('an implicit-TLS next hop that accepts connections and says nothing is still a dead destination (suspended)', async () => {
    // What tells it from a refused certificate: it never takes part in a handshake.
    const sockets = new Set<net.Socket>();
    const hole = net.createServer((c) => { sockets.add(c); c.on('error', () => undefined); });
    await new Promise<void>((resolve) => hole.listen(0, '127.0.0.1', () => resolve()));
    const port = (hole.address() as net.AddressInfo).port;
    const quiet = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        sandbox: SCRIPTS_UNHURRIED,
        // Nothing is expected to answer within it: a short connection timeout only makes the test quick.
        delivery: { route: { smarthost: { host: '127.0.0.1', port, implicitTls: true } }, tls: { mode: 'encrypt' }, connectTimeoutMs: 300, retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      const first = await quiet.send('sender@example.org', ['r@quiet.example']);
      const e1 = await quiet.nextAttempt((x) => x.id === first, { past: true });
      assert.equal(e1.outcomes[0]!.status, 'temporary');
      assert.doesNotMatch(e1.outcomes[0]!.reply, /TLS failed/);
      const second = await quiet.send('sender@example.org', ['r2@quiet.example']);
      const e2 = await quiet.nextAttempt((x) => x.id === second, { past: true });
      assert.match(e2.outcomes[0]!.reply, /delivery temporarily suspended/);
      assert.equal(sockets.size, 1, 'the second message did not wait out a connection of its own');
    } finally {
      await quiet.stop();
      hole.close();
      for (const c of sockets) c.destroy();
    }
  });

  test('a next hop that offers only TLS below 1.2: deferred as a TLS failure, implicit TLS too, nothing sent and no suspension', async () => {
    const context = tls.createSecureContext({
      cert: readFileSync(pki.server.cert), key: readFileSync(pki.server.key), minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0',
    });
    const received: string[] = [];
    const old = tls.createServer({ secureContext: context }, (c) => {
      c.on('error', () => undefined);
      c.on('data', (d) => received.push(d.toString()));
      c.write('220 old ESMTP\r\n');
    });
    old.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve) => old.listen(0, '127.0.0.1', () => resolve()));
    const port = (old.address() as net.AddressInfo).port;
    const downgraded = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        sandbox: SCRIPTS_UNHURRIED,
        delivery: { route: { smarthost: { host: '127.0.0.1', port, implicitTls: true } }, tls: { mode: 'encrypt' }, retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      for (const rcpt of ['r1@old.example', 'r2@old.example']) {
        const id = await downgraded.send('sender@example.org', [rcpt]);
        const e = await downgraded.nextAttempt((x) => x.id === id, { past: true });
        assert.equal(e.outcomes[0]!.status, 'temporary');
        // OpenSSL's reason and alert, without its thread id, function and source file.
        assert.match(e.outcomes[0]!.reply, /: TLS failed: ssl\/tls alert [a-z ]+ \(SSL alert number \d+\)$/);
        assert.equal(e.outcomes[0]!.enhanced, '4.7.5');
      }
      assert.deepEqual(received, []);
      assert.ok(!downgraded.logs.some((l) => String(l.msg).includes('delivery temporarily suspended')), 'the next hop answered: no dead destination');
    } finally {
      await downgraded.stop();
      old.close();
    }
  });

  interface RawPeer { port: number; lines: string[]; handshakes: number; messages: number; close(): void }

  /** A minimal SMTP next hop on a raw socket whose STARTTLS is in the test's hands (pki's server certificate). */
  async function startRawPeer(opts: { offerStartTls: boolean; injectAfter220?: string }): Promise<RawPeer> {
    const context = tls.createSecureContext({ cert: readFileSync(pki.server.cert), key: readFileSync(pki.server.key) });
    const sockets = new Set<net.Socket>();
    const peer: RawPeer = { port: 0, lines: [], handshakes: 0, messages: 0, close: () => { server.close(); for (const k of sockets) k.destroy(); } };
    const server = net.createServer((plain) => {
      sockets.add(plain);
      plain.on('error', () => undefined);
      let sock: net.Socket = plain;
      let secure = false;
      let buf = '';
      let inData = false;
      const onData = (d: Buffer): void => {
        buf += d.toString('latin1');
        for (;;) {
          if (inData) {
            const end = buf.indexOf('\r\n.\r\n');
            if (end < 0) return;
            buf = buf.slice(end + 5);
            inData = false;
            peer.messages++;
            sock.write('250 2.0.0 real-queued\r\n');
            continue;
          }
          const nl = buf.indexOf('\r\n');
          if (nl < 0) return;
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 2);
          peer.lines.push(line);
          if (/^EHLO/i.test(line)) sock.write(`250-peer\r\n${opts.offerStartTls && !secure ? '250-STARTTLS\r\n' : ''}250 8BITMIME\r\n`);
          else if (/^STARTTLS/i.test(line)) {
            if (!opts.offerStartTls || secure) { sock.write('502 5.5.1 STARTTLS not available\r\n'); continue; }
            plain.off('data', onData);
            plain.write(`220 2.0.0 Ready to start TLS\r\n${opts.injectAfter220 ?? ''}`);
            const t = new tls.TLSSocket(plain, { isServer: true, secureContext: context });
            t.on('error', () => undefined);
            t.once('secure', () => { peer.handshakes++; });
            t.on('data', onData);
            sock = t;
            secure = true;
            buf = '';
            return;
          } else if (/^MAIL/i.test(line)) sock.write('250 2.1.0 ok\r\n');
          else if (/^RCPT/i.test(line)) sock.write('250 2.1.5 ok\r\n');
          else if (/^DATA/i.test(line)) { sock.write('354 go on\r\n'); inData = true; }
          else if (/^QUIT/i.test(line)) { sock.end('221 2.0.0 bye\r\n'); return; }
          else sock.write('502 5.5.2 unknown command\r\n');
        }
      };
      plain.on('data', onData);
      plain.once('close', () => sockets.delete(plain));
      plain.write('220 peer ESMTP\r\n');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    peer.port = (server.address() as net.AddressInfo).port;
    return peer;
  }
});

describe('hostile-dns', () => {
  // Delivery against a real DNS server on loopback (test/helpers/dns-server.ts) and a real SMTP next hop: what
  // each DNS answer means for the mail. NXDOMAIN, null MX and a name DNS cannot hold bounce; SERVFAIL, REFUSED,
  // a truncated answer that cannot be had over TCP, and MX records naming addresses or no host name defer; an
  // MX host that is an alias is followed; one without an address (or an alias loop) is skipped for the next, and
  // when none has one the mail waits (the domain's own A record is only for a domain without MX); and a name
  // that takes a few seconds to resolve is waited for (c-ares times each try from recent answers: see
  // engine/dns/within-budget.ts).
  let sink: Sink;
  let dns: TestDnsServer;
  let s: DeliveryServer;

  /** A label DNS cannot hold (63 octets at most), which smtp-server's RCPT takes: no query is made (EBADNAME). */
  const LONG_LABEL = 'x'.repeat(70);
  const here = [{ type: 'A' as const, value: '127.0.0.1' }];
  const mx = (...hosts: string[]) => hosts.map((exchange, i) => ({ type: 'MX' as const, value: { exchange, priority: 10 * (i + 1) } }));

  before(async () => {
    sink = await startSink();
    dns = await startDnsServer({
      'live.test': mx('mx.live.test'),
      'mx.live.test': here,
      'servfail.test': [],
      'refused.test': [],
      'null.test': [{ type: 'MX', value: { exchange: '.', priority: 0 } }],
      'second.test': mx('ghost.second.test', 'mx.live.test'),
      'implicit.test': here,
      'allfail.test': [...mx('ghost.allfail.test', 'empty.allfail.test'), ...here],
      'empty.allfail.test': [{ type: 'TXT', value: ['no address here'] }],
      'tc.test': mx('mx.live.test'),
      'warm.test': mx('mx.live.test'),
      'slow.test': mx('mx.live.test'),
      'numeric.test': mx('127.0.0.1'),
      'forged.test': mx('x, status=sent.forged.test'),
      'x, status=sent.forged.test': here,
      'nulls.test': mx('.', '.'),
      'viacname.test': mx('alias.live.test'),
      'alias.live.test': [{ type: 'CNAME', value: 'mx.live.test' }],
      'loop.test': mx('a.loop.test'),
      'a.loop.test': [{ type: 'CNAME', value: 'b.loop.test' }],
      'b.loop.test': [{ type: 'CNAME', value: 'a.loop.test' }],
      'mixed.test': mx('127.0.0.1', 'mx.live.test'),
    });
    dns.servfail.add('servfail.test');
    dns.refused.add('refused.test');
    dns.truncated.add('tc.test');
    s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, dnsServers: [dns.address], retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
  });
  after(async () => {
    await s?.stop();
    await dns?.stop();
    await sink?.close();
  });

  test('each DNS answer for a recipient domain, end to end: delivered, bounced or deferred as it says', { timeout: 120_000 }, async () => {
    const to = ['a@live.test', 'b@nx.test', 'c@servfail.test', 'd@refused.test', 'e@null.test', 'f@second.test', 'g@implicit.test', 'h@allfail.test', 'i@tc.test', 'j@numeric.test', 'k@mixed.test', 'l@nulls.test', `m@${LONG_LABEL}.test`, 'n@viacname.test', 'o@loop.test', 'q@forged.test'];
    const id = await s.send('me@origin.test', to);
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 90_000, past: true });
    const got = Object.fromEntries(e.outcomes.map((o) => [o.recipient, `${o.status} ${o.enhanced ?? ''}`.trim()]));
    assert.deepEqual(got, {
      'a@live.test': 'delivered 2.0.0',
      'b@nx.test': 'permanent 5.1.2',
      'c@servfail.test': 'temporary 4.4.3',
      'd@refused.test': 'temporary 4.4.3',
      'e@null.test': 'permanent 5.1.10',
      'f@second.test': 'delivered 2.0.0',
      'g@implicit.test': 'delivered 2.0.0',
      'h@allfail.test': 'temporary 4.4.4',
      'i@tc.test': 'temporary 4.4.3',
      'j@numeric.test': 'temporary 4.4.4',
      'k@mixed.test': 'delivered 2.0.0',
      'l@nulls.test': 'permanent 5.1.10',
      [`m@${LONG_LABEL}.test`]: 'permanent 5.1.2',
      'n@viacname.test': 'delivered 2.0.0',
      'o@loop.test': 'temporary 4.4.4',
      'q@forged.test': 'temporary 4.4.4',
    }, JSON.stringify(e.outcomes, null, 1));
    const delivered = sink.messages.filter((m) => m.from === 'me@origin.test').flatMap((m) => m.to).sort();
    assert.deepEqual(delivered, ['a@live.test', 'f@second.test', 'g@implicit.test', 'k@mixed.test', 'n@viacname.test']);
    // An MX record naming an address is not used (Postfix and Exim refuse it too); before, it was connected to.
    const outcome = (r: string) => e.outcomes.find((o) => o.recipient === r)!;
    assert.equal(outcome('j@numeric.test').reply, 'MX records of numeric.test name no valid host ("127.0.0.1"): not used');
    // Nor one that is no host name (it was looked up as it came: a name service error on every attempt).
    assert.equal(outcome('q@forged.test').reply, 'MX records of forged.test name no valid host ("x, status=sent.forged.test"): not used');
    assert.match(outcome('k@mixed.test').remoteMta!, /^mx\.live\.test\[/);
    // A name DNS cannot hold bounces (it was 4.4.3, retried until the queue lifetime).
    assert.match(outcome(`m@${LONG_LABEL}.test`).reply, /not a valid domain name/);
    assert.equal(dns.queries.get('A allfail.test'), undefined, 'the A record of a domain with MX is not a fallback');
    assert.equal(dns.queries.get('MX null.test'), 1);
  });

  test('after many quick answers, a recipient domain whose MX takes 3 s to resolve is delivered, not deferred', { timeout: 120_000 }, async () => {
    // Before: c-ares gave each of its 2 tries about 1 s once the server had answered quickly a few times
    // (whatever the 5 s timeout said), so the lookup failed with ETIMEOUT after ~2 s: deferred, and the
    // failure kept for 30 s for every other message to that domain.
    const warm = await s.send('me@origin.test', ['w@warm.test']);
    assert.equal((await s.nextAttempt((x) => x.id === warm, { timeoutMs: 60_000, past: true })).outcomes[0]!.status, 'delivered');
    dns.recursing.set('slow.test', 3000);
    const id = await s.send('me@origin.test', ['z@slow.test']);
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 60_000, past: true });
    assert.equal(e.outcomes[0]!.status, 'delivered', JSON.stringify(e.outcomes[0]));
    assert.ok(dns.queries.get('MX slow.test')! >= 2, 'asked again while it waited');
  });

  test('the lookup cache: a flood of domains looked up once (bounces to made-up senders) does not push out one looked up again', { timeout: 120_000 }, async () => {
    // Before: one list, oldest first, a hit not counting: MAX_CACHED other domains pushed every answer out.
    const resolver = createResolver({ hostLookup: 'dns', servers: [dns.address] });
    const asked = (key: string) => dns.queries.get(key) ?? 0;
    await resolver.mx('warm.test');
    await resolver.mx('warm.test');
    const before = asked('MX warm.test');
    const flood = (i: number) => `d${i}.flood.test`;
    const count = MAX_CACHED + 250;
    for (let i = 0; i < count; i++) dns.zone.set(flood(i), [{ type: 'TXT', value: ['no MX: an empty answer, kept'] }]);
    for (let i = 0; i < count; i += 250) {
      await Promise.all(Array.from({ length: 250 }, (_, j) => resolver.mx(flood(i + j))));
    }
    await resolver.mx('warm.test');
    assert.equal(asked('MX warm.test'), before, 'still kept');
    await resolver.mx(flood(0));
    assert.equal(asked(`MX ${flood(0)}`), 2, 'bounded: the oldest of the flood went');
  });
});

describe('smtp-smuggling', () => {
  // SMTP smuggling (CVE-2023-51764 class): a client ends its DATA with a variant a lenient next hop would take
  // for the end (<LF>.<CR><LF>, <CR><LF>.<LF>, <LF>.<LF>, <CR>.<CR> …) and pipelines a second, forged message
  // behind it. Postern ends DATA only at <CR><LF>.<CR><LF>, so the variant and the forgery are one message's
  // text; on the way out every line ends in CRLF and every line-start dot is doubled, so a next hop that
  // ends DATA at any of the variants still reads one message. The next hop here is a raw socket recording
  // the exact bytes of the DATA phase. The client waits for each reply, pipelines the whole transaction, or sends
  // it a byte per write (every split of an ending across packets).
  let sink: RawSink;
  let s: DeliveryServer;

  before(async () => {
    sink = await startRawSink();
    s = await startDeliveryServer({
      config: configYaml({
        hostname: 'postern.test', localDomains: ['example.com'],
        listeners: [testListener('in')],
        delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }),
      }),
    });
  });
  after(async () => {
    await s?.stop();
    await sink?.close();
  });

  const FORGED = 'MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: forged\r\n\r\nPay now.\r\n';

  const ENDINGS: Record<string, string> = {
    '<LF>.<CR><LF>': '\n.\r\n', '<CR><LF>.<LF>': '\r\n.\n', '<LF>.<LF>': '\n.\n', '<CR>.<CR>': '\r.\r',
    '<CR>.<CR><LF>': '\r.\r\n', '<CR><LF>.<CR>': '\r\n.\r', '<LF>..<CR><LF>': '\n..\r\n',
  };

  /**
   * How the client sends the transaction: after each reply (`after 354`); MAIL, RCPT, DATA and the message in one
   * write (`pipelined`, no wait for the 354); or all of that a byte per write (`a byte at a time`: every split of an
   * ending across packets, the parser's seams).
   */
  const MODES = ['after 354', 'pipelined', 'a byte at a time'] as const;

  async function sendTransaction(c: SmtpTestClient, mode: typeof MODES[number], message: string): Promise<string> {
    const commands = ['MAIL FROM:<a@example.org>', 'RCPT TO:<b@example.com>', 'DATA'];
    if (mode === 'after 354') {
      for (const command of commands) assert.ok((await c.command(command)).code < 400);
      c.socket.write(message);
      return (await c.read()).text;
    }
    const bytes = Buffer.from(commands.map((l) => `${l}\r\n`).join('') + message);
    if (mode === 'pipelined') c.socket.write(bytes);
    else {
      c.socket.setNoDelay(true); // each byte its own packet, as far as the kernel goes
      for (const byte of bytes) await new Promise((resolve) => c.socket.write(Buffer.from([byte]), resolve));
    }
    const replies = [];
    for (let i = 0; i < 4; i++) replies.push(await c.read());
    assert.deepEqual(replies.map((r) => r.code), [250, 250, 354, 250], replies.map((r) => r.text).join(' | '));
    return replies[3]!.text;
  }

  for (const mode of MODES) for (const [name, ending] of Object.entries(ENDINGS)) {
    test(`${mode}: a message "ended" with ${name} and a forged one behind it: one message in, one message out, no bare line end on the wire`, async () => {
      const c = await SmtpTestClient.connect(s.port());
      await c.hello();
      const reply = await sendTransaction(c, mode, `Subject: smuggling ${name} ${mode}\r\n\r\nhello${ending}${FORGED}.\r\n`);
      assert.match(reply, /^250 2\.0\.0 Ok: queued as /);
      assert.equal((await c.command('NOOP')).code, 250, 'nothing of the forgery was read as a command');
      await c.quit();
      const id = /queued as (\S+)/.exec(reply)![1]!;
      const e = await s.nextAttempt((x) => x.id === id, { past: true });
      assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
      const wire = sink.messages.find((m) => m.includes(` id ${id}`))!;
      assert.ok(wire, 'the next hop got it');
      assert.equal(sink.messages.filter((m) => m.includes('Subject: forged')).length, sink.messages.filter((m) => m.includes('Subject: smuggling')).length,
        'the forged text only ever arrives inside the smuggling message');
      const text = wire.toString('latin1');
      assert.ok(text.includes(`Subject: smuggling ${name} ${mode}`) && text.includes('\r\nSubject: forged\r\n'), 'both parts in the one message');
      assert.doesNotMatch(text, /\r(?!\n)|(?<!\r)\n/, 'every line ends in CRLF');
      assert.doesNotMatch(text, /\r\n\.(?!\.)/, 'every line-start dot is doubled');
    });
  }
});

describe('refused-greeting', () => {
  // A next hop that refuses every session at its greeting (421 "too many connections", a host recovering from an
  // outage, a 554 block) was connected to once per queued message: after an outage thousands of messages came due,
  // and each opened a connection only to be told 421, hammering a host that had just said it had no room. Postfix
  // suspends such a destination ("delivery temporarily suspended: host … refused to talk to me"). So does Postern
  // now, when no connection of its own to that destination is open: a refusal while one is in session is that
  // host's limit on connections, and the mail goes on over the ones it has.
  const MESSAGES = 20;

  function server(port: number, delivery: Record<string, unknown> = {}): ReturnType<typeof startDeliveryServer> {
    return startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port }, tls: { mode: 'none' }, retrySchedule: [3600], ...delivery },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'full.test': [{ exchange: 'mx.full.test', priority: 10 }] }, { 'mx.full.test': ['127.0.0.1'] }),
    });
  }

  /** A next hop's greeting with a per-client connection limit of one: it counts a session from its accept to its close. */
  function oneSessionAtATime(): { refused: number; greeting(s: net.Socket): 'stop' | void } {
    let open = 0;
    const limit = {
      refused: 0,
      greeting(s: net.Socket): 'stop' | void {
        if (open >= 1) { limit.refused++; s.end('421 4.7.0 peer: one connection at a time\r\n'); return 'stop'; }
        open++;
        s.once('close', () => { open--; });
      },
    };
    return limit;
  }

  test('a next hop that refuses every session at its greeting is suspended: the rest of its mail is deferred without a connection each', async () => {
    let connections = 0;
    const peer = await startScriptedPeer({ greeting: (s) => { connections++; s.end('421 4.7.0 peer: too many connections, try again later\r\n'); return 'stop'; } });
    const s = await server(peer.port, { concurrency: 4, perDestinationConcurrency: 4 });
    try {
      const ids: string[] = [];
      for (let i = 0; i < MESSAGES; i++) ids.push(await s.send('a@origin.test', [`x${i}@full.test`]));
      const outcomes = [];
      for (const id of ids) outcomes.push((await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).outcomes[0]!);
      assert.ok(outcomes.every((o) => o.status === 'temporary'));
      assert.ok(connections <= 4, `${connections} connections for ${MESSAGES} messages: at most the ones opened before the first refusal`);
      const suspended = outcomes.filter((o) => /^delivery temporarily suspended: mx\.full\.test\[127\.0\.0\.1\]:\d+: refused: 421 4\.7\.0 peer: too many connections/.test(o.reply));
      assert.equal(suspended.length, MESSAGES - connections, 'the others deferred as suspended, with the refusal');
      assert.ok(s.logs.some((l) => /delivery temporarily suspended for 3600 s: .*refused: 421/.test(String(l.msg))), 'said once at warn');
    } finally {
      await s.stop();
      peer.close();
    }
  });

  test('a refusal at the greeting while another connection of ours is in session is a limit on connections: not suspended', async () => {
    const limit = oneSessionAtATime();
    let release = false;
    let inData = 0;
    const peer = await startScriptedPeer({
      // One session at a time, as a host with a per-client connection limit.
      greeting: limit.greeting,
      // The session's verdict waits until the test lets it go: the others are refused meanwhile.
      endOfData: (s: net.Socket) => {
        inData++;
        void until('the test to let the verdict go', () => release, { timeoutMs: 60_000 }).then(() => s.write('250 2.0.0 queued\r\n'));
        return 'answered';
      },
    });
    const s = await server(peer.port, { concurrency: 2, perDestinationConcurrency: 2 });
    try {
      const ids = [await s.send('a@origin.test', ['a@full.test'])];
      await until('the first message in session, awaiting its verdict', () => inData >= 1, { timeoutMs: 60_000 });
      ids.push(await s.send('a@origin.test', ['b@full.test']));
      await until('a second connection refused', () => limit.refused >= 1, { timeoutMs: 60_000 });
      // Still in session on the one connection: a third message is refused at its own, and not suspended either.
      ids.push(await s.send('a@origin.test', ['c@full.test']));
      await until('a third connection refused', () => limit.refused >= 2, { timeoutMs: 60_000 });
      release = true;
      const outcomes = await Promise.all(ids.map(async (id) => (await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).outcomes[0]!));
      assert.deepEqual(outcomes.map((o) => o.status), ['delivered', 'temporary', 'temporary']);
      for (const o of outcomes.slice(1)) assert.match(o.reply, /^mx\.full\.test\[127\.0\.0\.1\]:\d+: refused: 421 4\.7\.0 peer: one connection at a time/, 'its own refusal, not a suspension');
      assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))));
    } finally {
      await s.stop();
      peer.close();
    }
  });

  test('a refusal at the greeting while a connection of ours the pool let go is still open is a limit on connections: not suspended', async () => {
    // One session at a time, as a host with a per-client connection limit; it counts a session until it has answered
    // the QUIT, which this one is slow to do. A pooled connection closed to make room for another identity's (a
    // message with another TLS server name, here) is still in session for it when the new connection comes.
    const limit = oneSessionAtATime();
    const quits: net.Socket[] = [];
    const peer = await startScriptedPeer({
      greeting: limit.greeting,
      quit: (s) => { quits.push(s); return 'stop'; },
    });
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { smarthost: { host: '127.0.0.1', port: peer.port } }, tls: { mode: 'none' }, retrySchedule: [3600], concurrency: 1, perDestinationConcurrency: 1 },
      }),
      scripts: {
        'rcptto.ts': 'export default () => accept();',
        'predelivery.ts': 'export default (ctx: PredeliveryContext) => deliver({ tls: { serverName: `relay.${ctx.destination.domain}` } });',
      },
    });
    try {
      const first = await s.send('a@origin.test', ['a@one.test']);
      assert.equal((await s.nextAttempt((e) => e.id === first, { timeoutMs: 60_000, past: true })).outcomes[0]!.status, 'delivered');
      const second = await s.send('a@origin.test', ['b@two.test']);
      const o = (await s.nextAttempt((e) => e.id === second, { timeoutMs: 60_000, past: true })).outcomes[0]!;
      assert.equal(o.status, 'temporary');
      assert.equal(quits.length, 1, 'the idle connection was let go to make room');
      assert.equal(limit.refused, 1);
      assert.match(o.reply, /^127\.0\.0\.1\[127\.0\.0\.1\]:\d+: refused: 421 4\.7\.0 peer: one connection at a time/, 'its own refusal, not a suspension');
      assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))), 'the relay is not suspended');
    } finally {
      await s.stop();
      peer.close();
    }
  });

  test('a refusal at the greeting while another connection of ours is still being set up (EHLO, STARTTLS) is a limit on connections: not suspended', async () => {
    // The next hop counts a session from its accept; ours counts it once EHLO (and STARTTLS) are done. The first
    // connection's EHLO is answered only once the second has been refused.
    const limit = oneSessionAtATime();
    let inEhlo = 0;
    const peer = await startScriptedPeer({
      greeting: limit.greeting,
      ehlo: (s) => {
        inEhlo++;
        void until('the second connection refused', () => limit.refused >= 1, { timeoutMs: 60_000 }).then(() => s.write('250-peer\r\n250 8BITMIME\r\n'));
        return 'answered';
      },
    });
    const s = await server(peer.port, { concurrency: 2, perDestinationConcurrency: 2 });
    try {
      const ids = [await s.send('a@origin.test', ['a@full.test'])];
      await until('the first connection in EHLO', () => inEhlo >= 1, { timeoutMs: 60_000 });
      ids.push(await s.send('a@origin.test', ['b@full.test']));
      const outcomes = await Promise.all(ids.map(async (id) => (await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).outcomes[0]!));
      assert.deepEqual(outcomes.map((o) => o.status), ['delivered', 'temporary']);
      assert.match(outcomes[1]!.reply, /^mx\.full\.test\[127\.0\.0\.1\]:\d+: refused: 421 4\.7\.0 peer: one connection at a time/);
      assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))), 'the next hop is not suspended');
    } finally {
      await s.stop();
      peer.close();
    }
  });

  test('a refusal at the greeting while a connection of ours to the same server under another name is in session is a limit on connections: not suspended', async () => {
    // Shared hosting: two domains' MX hosts are two names of one server, which limits sessions per client address. The
    // pool tells destinations apart by name, so the second domain's refusal while the first's session was open was
    // taken for a host refusing all mail, and its destination suspended for the retry delay.
    const limit = oneSessionAtATime();
    let release = false;
    let inData = 0;
    const peer = await startScriptedPeer({
      greeting: limit.greeting,
      endOfData: (s: net.Socket) => {
        inData++;
        void until('the test to let the verdict go', () => release, { timeoutMs: 60_000 }).then(() => s.write('250 2.0.0 queued\r\n'));
        return 'answered';
      },
    });
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600], concurrency: 2, perDestinationConcurrency: 2 },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver(
        { 'one.test': [{ exchange: 'mail.one.test', priority: 10 }], 'two.test': [{ exchange: 'mail.two.test', priority: 10 }] },
        { 'mail.one.test': ['127.0.0.1'], 'mail.two.test': ['127.0.0.1'] },
      ),
    });
    try {
      const ids = [await s.send('a@origin.test', ['a@one.test'])];
      await until('the first message in session, awaiting its verdict', () => inData >= 1, { timeoutMs: 60_000 });
      ids.push(await s.send('a@origin.test', ['b@two.test']));
      await until('a second connection refused', () => limit.refused >= 1, { timeoutMs: 60_000 });
      release = true;
      const outcomes = await Promise.all(ids.map(async (id) => (await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).outcomes[0]!));
      assert.deepEqual(outcomes.map((o) => o.status), ['delivered', 'temporary']);
      assert.match(outcomes[1]!.reply, /^mail\.two\.test\[127\.0\.0\.1\]:\d+: refused: 421 4\.7\.0 peer: one connection at a time/);
      assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))), 'the other name of the server is not suspended');
      // Its next message is tried (the first's connection, idle in the pool, may still be the one the server allows).
      const third = await s.send('a@origin.test', ['c@two.test']);
      const o = (await s.nextAttempt((e) => e.id === third, { timeoutMs: 60_000, past: true })).outcomes[0]!;
      assert.doesNotMatch(o.reply, /suspended/);
    } finally {
      await s.stop();
      peer.close();
    }
  });

  test('a refusal at the greeting while another connection of ours waits for its greeting (a greet pause) does not suspend the next hop', { timeout: 120_000 }, async () => {
    // Sendmail's greet_pause, or any host slow to greet, with a per-client connection limit: the second connection is
    // refused at once while the first still waits for its 220. Connections not yet greeted did not count, so the healthy
    // relay was suspended for the first retry delay and its other mail deferred without a try.
    let open = 0;
    let refused = 0;
    const paused: Array<() => void> = [];
    const peer = await startScriptedPeer({
      greeting(s) {
        if (open >= 1) { refused++; s.end('421 4.7.0 peer: one connection at a time\r\n'); return 'stop'; }
        open++;
        s.once('close', () => { open--; });
        return new Promise<void>((greet) => paused.push(greet));
      },
    });
    const s = await server(peer.port, { concurrency: 4, perDestinationConcurrency: 2 });
    try {
      const first = await s.send('a@origin.test', ['x1@full.test']);
      const second = await s.send('a@origin.test', ['x2@full.test']);
      await until('one connection waiting for its greeting, the other refused', () => paused.length === 1 && refused === 1, { timeoutMs: 60_000 });
      paused[0]!();
      const attempts = await Promise.all([first, second].map((id) => s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })));
      assert.equal(attempts.filter((a) => a.removed).length, 1, 'one delivered over the greeted connection');
      assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))), 'the relay is not suspended');
      // Mail to it goes on: not deferred as suspended.
      const third = await s.send('a@origin.test', ['x3@full.test']);
      assert.equal((await s.nextAttempt((e) => e.id === third, { timeoutMs: 60_000, past: true })).removed, true);
    } finally {
      await s.stop();
      peer.close();
    }
  });
});

describe('ehlo-temporary-refusal', () => {
  // A next hop that answered EHLO with a 4xx (a temporary refusal: load, a lookup that failed) was sent HELO instead, as
  // nodemailer does for any EHLO refusal. RFC 5321 §4.1.4 has HELO stand in for an EHLO the server does not know (a 5xx,
  // as 500 or 502), not for a temporary failure; and a HELO session has no extensions: an 8-bit message then bounced
  // for good (5.6.3, no 8BITMIME) over what the next hop had said was temporary, and in `may` mode mail went without
  // STARTTLS. Now a 4xx to EHLO fails that session as a 4xx greeting would: the next address or MX host is tried, or the
  // mail waits for its retry. A 5xx to EHLO still falls back to HELO.
  test('a 4xx to EHLO: no HELO session, the 8-bit message goes to the backup MX instead of bouncing', async () => {
    const backup = await startSink();
    let mailInHeloSession = 0;
    const primary = await startScriptedPeer({
      ehlo: (s, line) => {
        if (/^HELO/i.test(line)) return undefined;
        s.write('450 4.3.2 not now, try again later\r\n');
        return 'answered';
      },
      mail: () => { mailInHeloSession++; return undefined; },
    }, '127.0.0.40', backup.port);
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: backup.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx1.dest.test', priority: 10 }, { exchange: 'mx2.dest.test', priority: 20 }] },
        { 'mx1.dest.test': ['127.0.0.40'], 'mx2.dest.test': ['127.0.0.1'] }),
    });
    try {
      const id = await s.send('a@origin.test', ['b@dest.test'], 'Subject: 8-bit\r\n\r\nGrüße aus Köln\r\n');
      const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
      assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
      assert.equal(mailInHeloSession, 0, 'no transaction in a HELO session with the first MX');
      assert.equal(backup.messages.length, 1);
    } finally {
      await s.stop();
      primary.close();
      await backup.close();
    }
  });

  test('a 502 to EHLO (a next hop that knows only HELO): the message goes over HELO, as before', async () => {
    const peer = await startScriptedPeer({ ehlo: (s) => { s.write('502 5.5.2 command not recognized\r\n'); return 'answered'; } });
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'old.test': [{ exchange: 'mx.old.test', priority: 10 }] }, { 'mx.old.test': ['127.0.0.1'] }),
    });
    try {
      const id = await s.send('a@origin.test', ['b@old.test'], 'Subject: 7-bit\r\n\r\nhello\r\n');
      const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
      assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    } finally {
      await s.stop();
      peer.close();
    }
  });
});

describe('next-hop-extensions', () => {
  // What a next hop's EHLO reply does not offer is not sent to it. nodemailer adds BODY=8BITMIME and SMTPUTF8
  // where they are offered and otherwise sent the message and the addresses as they were: 8-bit content to a
  // host without 8BITMIME (RFC 6152 §3), `jörg@…` to a host without SMTPUTF8 (RFC 6531 §3.2), which may strip
  // the 8th bit or deliver to another mailbox. Now a UTF-8 domain goes in its A-label form, a UTF-8 local part
  // fails with 5.6.7 and 8-bit content with 5.6.3 (bounced to the sender); a host that offers both gets both.
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
});

describe('data-reply', () => {
  // nodemailer sent the message after a 2yz reply to DATA as well as after 354 (for "some servers" that answer
  // 250). A 2yz is no go-ahead (RFC 5321 §4.3.2): a next hop that answers so is not reading a message, and took
  // each of its lines for a command (a "RCPT TO:" in the body made it a recipient); or its replies are out of
  // step with our commands (a stale reply). Deferred now, as Postfix does, without the message and without
  // using that connection again; recipients refused at RCPT keep their own replies.
  for (const pipelining of [false, true]) {
    test(`a 250 in reply to DATA${pipelining ? ' (PIPELINING)' : ''}: the message is not sent into the command stream; deferred, then delivered once`, async () => {
      const seen = { ehlo: 0, rcpt: [] as string[], messages: 0, dataAnswered250: 0, reusedAfter250: false };
      let answered250: unknown = null;
      const peer = await startScriptedPeer({
        ehlo: (s) => { seen.ehlo++; s.write(`250-peer\r\n${pipelining ? '250-PIPELINING\r\n' : ''}250 8BITMIME\r\n`); return 'answered'; },
        rcpt: (s, line) => {
          seen.rcpt.push(line);
          if (/<refused@/.test(line)) { s.write('550 5.1.1 no such user\r\n'); return 'answered'; }
        },
        mail: (s) => { if (s === answered250) seen.reusedAfter250 = true; },
        data: (s) => (seen.dataAnswered250++ === 0 ? (answered250 = s, s.write('250 2.0.0 ok\r\n'), 'answered') : undefined),
        endOfData: (_s, message) => { if (message.includes('RCPT TO:<injected')) seen.messages++; },
      });
      const s = await startDeliveryServer({
        config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [0.1] }) }),
      });
      try {
        const id = await s.send('a@example.test', ['b@example.test', 'refused@example.test'], 'Subject: x\r\n\r\nRCPT TO:<injected@example.test>\r\n');
        const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 30_000, past: true });
        const by = new Map(first.outcomes.map((o) => [o.recipient, o]));
        assert.equal(by.get('b@example.test')?.status, 'temporary');
        assert.match(by.get('b@example.test')!.reply, /250 2\.0\.0 ok in reply to DATA command, not a go-ahead \(354\): the message was not sent/);
        assert.equal(by.get('refused@example.test')?.status, 'permanent', 'refused at RCPT: its own reply');
        await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
        assert.ok(!seen.rcpt.some((l) => /injected/.test(l)), `no line of the message taken for a command: ${seen.rcpt.join(' | ')}`);
        assert.equal(seen.messages, 1, 'delivered once');
        // Counted by connection, not by EHLOs: a loaded machine may open one more connection for the retry.
        assert.equal(seen.reusedAfter250, false, 'the connection that got 250 to DATA was not used again');
        assert.ok(seen.ehlo >= 2);
      } finally {
        await s.stop();
        peer.close();
      }
    });
  }
});

describe('ambiguous-end-of-data', () => {
  /**
   * A next hop that takes the whole message and then drops the connection (a reset, or no reply before the
   * timeout) may have queued it: SMTP cannot tell (RFC 1047), and retrying is right, with one copy too many
   * at worst. The deferral says so, as Postfix's "message may be sent more than once", instead of a bare
   * "connection failed: read ECONNRESET"; a connection lost before the message went out says nothing of it.
   */
  /**
   * A minimal next hop over a real socket: `drop` says where the n-th transaction's connection is reset, or
   * which bytes answer the end of its message instead of a reply.
   */
  async function startDroppingPeer(drop: (n: number) => 'rcpt' | 'end-of-data' | { endOfData: string } | null): Promise<{ port: number; messages: number; close(): void }> {
    const state = { messages: 0, transactions: 0 };
    const peer = await startScriptedPeer({
      mail: () => { state.transactions++; },
      rcpt: (s) => (drop(state.transactions) === 'rcpt' ? (s.resetAndDestroy(), 'stop') : undefined),
      endOfData: (s) => {
        state.messages++;
        const fault = drop(state.transactions);
        if (fault === 'end-of-data') return (s.resetAndDestroy(), 'stop');
        if (typeof fault === 'object' && fault) return (s.write(fault.endOfData), 'answered');
      },
    });
    return { port: peer.port, get messages() { return state.messages; }, close: peer.close };
  }

  for (const where of ['end-of-data', 'rcpt'] as const) {
    test(`the next hop resets the connection ${where === 'rcpt' ? 'at RCPT (nothing sent)' : 'after the end of the message, before its reply'}: retried, and the deferral ${where === 'rcpt' ? 'claims no duplicate' : 'says it may be delivered twice'}`, async () => {
      const peer = await startDroppingPeer((n) => (n === 1 ? where : null));
      const s = await startDeliveryServer({
        config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [0.1] }) }),
      });
      try {
        const id = await s.send('a@example.test', ['b@example.test']);
        await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
        assert.equal(peer.messages, where === 'rcpt' ? 1 : 2, where === 'rcpt' ? 'one copy' : 'one copy too many at worst, as SMTP permits');
        const deferred = s.logs.find((l) => l.id === id && l.status === 'deferred');
        assert.ok(deferred, 'the first attempt is deferred');
        if (where === 'end-of-data') assert.match(String(deferred.msg), /lost connection after the end of the message, before its reply.*may be delivered more than once/);
        else assert.doesNotMatch(String(deferred.msg), /more than once/);
      } finally {
        await s.stop();
        peer.close();
      }
    });
  }

  // Answers to the end of the message that are no verdict on it (RFC 5321 §4.2: a 2yz, 4yz or 5yz reply code):
  // nodemailer took any first "2" for success, and the deferral of the others did not say the next hop may
  // have the message. Each is retried, and says so; a multi-line 250 is a delivery.
  for (const endOfData of ['2xx garbage\r\n', '25\r\n', '354 again\r\n', '999 what\r\n', 'hello\r\n', '\x00\xff\r\n']) {
    test(`the next hop answers the end of the message with ${JSON.stringify(endOfData)}: retried, and the deferral says it may be delivered twice`, async () => {
      const peer = await startDroppingPeer((n) => (n === 1 ? { endOfData } : null));
      const s = await startDeliveryServer({
        config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [0.1] }) }),
      });
      try {
        const id = await s.send('a@example.test', ['b@example.test']);
        await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
        assert.equal(peer.messages, 2);
        const deferred = s.logs.find((l) => l.id === id && l.status === 'deferred');
        assert.ok(deferred, 'the first attempt is deferred');
        assert.match(String(deferred.msg), /malformed reply to the end of the message .*may be delivered more than once/);
        assert.equal(s.logs.filter((l) => l.id === id && l.status === 'sent').length, 1);
      } finally {
        await s.stop();
        peer.close();
      }
    });
  }

  test('a multi-line 250 to the end of the message is a delivery', async () => {
    const peer = await startDroppingPeer(() => ({ endOfData: '250-2.0.0 queued\r\n250 2.0.0 as 1234\r\n' }));
    const s = await startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [0.1] }) }),
    });
    try {
      const id = await s.send('a@example.test', ['b@example.test']);
      const done = await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
      assert.equal(done.attempt, 1);
      assert.equal(peer.messages, 1);
      assert.equal(s.logs.find((l) => l.id === id && l.status === 'sent')?.reply, '250 2.0.0 queued 2.0.0 as 1234');
    } finally {
      await s.stop();
      peer.close();
    }
  });
});

describe('end-of-data-timeout', () => {
  // The reply to the message's final dot was given commandTimeoutMs (5 minutes by default), as every other reply, and
  // nodemailer's idle timeout as long. A next hop that scans mail before it answers (a before-queue content filter,
  // an antivirus under load) may take longer; RFC 5321 §4.5.3.2.6 has the client wait 10 minutes for that reply,
  // because giving up then leaves the message with the next hop and the retry sends it again (Postfix
  // smtp_data_done_timeout, 600 s). Each such message arrived twice. Now that reply has delivery.endOfDataTimeoutMs
  // (10 minutes), whatever commandTimeoutMs is; it is still bounded.
  // The test keeps commandTimeoutMs short and the next hop's verdict several times longer, well within the new limit.
  const COMMAND_MS = 500;

  async function server(port: number, endOfDataTimeoutMs: number): ReturnType<typeof startDeliveryServer> {
    return startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: {
          enabled: true, route: { mx: true, port }, tls: { mode: 'none' }, retrySchedule: [3600],
          commandTimeoutMs: COMMAND_MS, endOfDataTimeoutMs,
        },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
    });
  }

  test('a next hop slower than commandTimeoutMs to answer the final dot, within endOfDataTimeoutMs: delivered once', async () => {
    let verdicts = 0;
    const peer = await startScriptedPeer({
      endOfData: (s) => {
        // Six command timeouts, without a byte meanwhile (as a scanning host sends none).
        setTimeout(() => { verdicts++; s.write('250 2.0.0 queued after a long scan\r\n'); }, 6 * COMMAND_MS);
        return 'answered';
      },
    });
    const s = await server(peer.port, 120_000);
    try {
      const id = await s.send('a@origin.test', ['b@dest.test']);
      const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
      assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
      assert.equal(verdicts, 1);
    } finally {
      await s.stop();
      peer.close();
    }
  });

  test('a next hop that never answers the final dot: deferred once endOfDataTimeoutMs has passed (it may have it)', async () => {
    const peer = await startScriptedPeer({ endOfData: () => 'answered' });
    const s = await server(peer.port, 1000);
    try {
      const id = await s.send('a@origin.test', ['b@dest.test']);
      const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
      assert.equal(e.outcomes[0]!.status, 'temporary');
      assert.match(e.outcomes[0]!.reply, /may have it/);
    } finally {
      await s.stop();
      peer.close();
    }
  });
});

describe('longest-timeouts', () => {
  // delivery.commandTimeoutMs and connectTimeoutMs at the largest value the schema takes (2^31-1 ms, Node's longest
  // timer). The message's own limit is commandTimeoutMs plus 1 ms a byte: past a timer's reach Node ran it after
  // 1 ms, and every message timed out while it went out (deferred, tried again, the same, until it bounced). The
  // warning Node gives for such a timer is counted (emitted when the timer is set: no timing involved); the sink
  // shows whether the message arrived (7.6 MB: one that does not go out within 1 ms).
  test('commandTimeoutMs and connectTimeoutMs 2147483647: the message is delivered, no timer overflows', async () => {
    const overflows: string[] = [];
    const onWarning = (w: Error): void => { if (w.name === 'TimeoutOverflowWarning') overflows.push(w.message); };
    process.on('warning', onWarning);
    const sink = await startSink();
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600], commandTimeoutMs: 2147483647, connectTimeoutMs: 2147483647 },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({ 'far.test': [{ exchange: 'mx.far.test', priority: 10 }] }, { 'mx.far.test': ['127.0.0.1'] }),
    });
    try {
      const id = await s.send('a@origin.test', ['z@far.test'], `Subject: patient\r\n\r\n${'a line of the body\r\n'.repeat(400_000)}`);
      const attempt = await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
      assert.deepEqual(attempt.outcomes.map((o) => [o.status, o.reply.slice(0, 3)]), [['delivered', '250']]);
      assert.match(sink.messages[0]!.data.toString(), /Subject: patient/);
    } finally {
      process.off('warning', onWarning);
      await s.stop();
      await sink.close();
    }
    assert.deepEqual(overflows, []);
  });
});
