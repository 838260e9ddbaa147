// A reply that is not in SMTP's form is no verdict: a multi-line reply whose lines carry different reply codes (RFC
// 5321 §4.2.1: "the reply code on each of the lines MUST be the same"), a continuation ended by a line without one, a
// reply with no reply code at all. nodemailer and the outcome took the first line's code (nodemailer its first
// character): "250-ok" then "550 5.1.1 no such user" to RCPT made that recipient accepted, and the 250 to the final
// dot recorded it delivered, though the next hop (Postfix reads the last line's code) had refused it and never
// delivered to it: the message lost for that recipient, no bounce. "250-queued" then "451 failed" to the final dot, or
// "2.1.5 ok" to RCPT, likewise. Such a reply is deferred, whichever way it is malformed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

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
