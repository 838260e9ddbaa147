// Retries on the configured schedule, per-recipient results, bounces (RFC 3464 DSNs) and when there are
// none (null sender, NOTIFY=NEVER), and the pre-delivery script's reject and defer.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, parseDsn, type DeliveryServer } from '../helpers/delivery-server.ts';
import { until } from '../helpers/wait.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

let sink: Sink;
let s: DeliveryServer;
const refusals = new Map<string, number>();

before(async () => {
  sink = await startSink({
    decide(stage, address) {
      if (stage !== 'rcpt') return null;
      const local = address.split('@')[0]!;
      if (local.startsWith('bad')) return { code: 550, text: `5.1.1 <${address}>: Recipient address rejected: User unknown` };
      const m = /^later(\d)/.exec(local); // laterN: 451 for the first N attempts
      if (m) {
        const n = refusals.get(address) ?? 0;
        refusals.set(address, n + 1);
        if (n < Number(m[1])) return { code: 451, text: '4.2.0 Try again later' };
      }
      return null;
    },
  });
  s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test',
      sandbox: { timeoutMs: 1000 },
      listeners: [testListener('in')],
      // Scans every 200 ms rather than 5 s: 'two scans and no notice' (s.scans) then waits 0.4 s, not 10.
      delivery: smarthostDelivery(sink.port, { retrySchedule: [0.25, 0.75], scanIntervalMs: 200 }),
    }),
    scripts: {
      'rcptto.ts': `export default () => accept();`,
      'predelivery.ts': `
export default function predelivery(ctx: PredeliveryContext): PredeliveryVerdict | void {
  log('CTX ' + JSON.stringify(ctx.message));
  if (ctx.destination.domain === 'refused.test') return reject('Policy says no', { code: 554, enhanced: '5.7.1' });
  if (ctx.destination.domain === 'held.test' && ctx.message.attempt < 3) return defer('Held for review');
}
`,
    },
  });
  s.queue!.onAttempt((e) => {
    if (e.attempt === 1 && !e.removed) firstStates.set(e.id, readFileSync(s.runtime.spool.statePath(e.id), 'utf8'));
  });
});

/**
 * Each message's state file as its first attempt left it, read as that attempt ends: read after the test got the
 * event, it could be the second attempt's already (a retry 0.25 s on, on a machine that descheduled the test that long).
 */
const firstStates = new Map<string, string>();
const stateAfterFirstAttempt = (id: string) => JSON.parse(firstStates.get(id)!);

after(async () => {
  await s?.stop();
  await sink?.close();
});

const dsnTo = (rcpt: string) => sink.messages.filter((m) => m.from === '' && m.to[0] === rcpt);

test('temporary failures are retried on the schedule (0.25 s, then 0.75 s repeating) until accepted', async () => {
  const id = await s.send('me@origin.test', ['later3@dest.test']);
  const first = await s.nextAttempt((e) => e.id === id, { past: true });
  assert.equal(first.outcomes[0]!.status, 'temporary');
  assert.equal(first.outcomes[0]!.reply, '451 4.2.0 Try again later');
  const state = stateAfterFirstAttempt(id);
  assert.equal(state.attempts, 1);
  assert.match(state.errors[0], /later3@dest\.test: 127\.0\.0\.1\[127\.0\.0\.1\]:\d+ said: 451 4\.2\.0 Try again later/);
  assert.equal(state.recipients[0].lastError, '451 4.2.0 Try again later');
  const done = await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
  assert.equal(done.attempt, 4);
  const events = s.attempts.filter((e) => e.id === id);
  assert.deepEqual(events.map((e) => e.attempt), [1, 2, 3, 4]);
  // nextAttemptAt follows the schedule: +0.25 s after attempt 1, +0.75 s after 2 and 3 (the last step repeats).
  const ctxTimes = s.logs.filter((l) => String(l.msg).startsWith('CTX ') && String(l.msg).includes(id)).map((l) => Date.parse(String(l.time)));
  assert.equal(ctxTimes.length, 4);
  const gaps = ctxTimes.slice(1).map((t, i) => t - ctxTimes[i]!);
  assert.ok(gaps[0]! >= 240, `gap 1: ${gaps[0]} ms`); // never early; how late depends on the machine's load
  assert.ok(gaps[1]! >= 740 && gaps[2]! >= 740, `gaps 2, 3: ${gaps.join(', ')} ms`);
  assert.equal(sink.attempts.filter((a) => a.from === 'me@origin.test').length >= 4, true, 'the next hop saw every attempt');
  assert.equal(sink.messages.filter((m) => m.to.includes('later3@dest.test')).length, 1);
});

test('per-recipient results: a 5xx bounces that recipient only; the delivered one is not sent again', async () => {
  const id = await s.send('me@origin.test', ['ok@dest.test', 'bad@dest.test', 'later1@dest.test']);
  const first = await s.nextAttempt((e) => e.id === id, { past: true });
  const status = Object.fromEntries(first.outcomes.map((o) => [o.recipient, o.status]));
  assert.deepEqual(status, { 'ok@dest.test': 'delivered', 'bad@dest.test': 'permanent', 'later1@dest.test': 'temporary' });
  assert.ok(first.bounceId, 'a bounce for bad@');
  // Postfix's line, while the message itself stays queued for later1@.
  const notice = s.logs.filter((l) => l.id === id && l.bounce === first.bounceId && l.level === 30);
  assert.deepEqual(notice.map((l) => [l.msg, l.to]), [[`${id}: sender non-delivery notification: ${first.bounceId}`, ['bad@dest.test']]]);
  const state = stateAfterFirstAttempt(id);
  assert.deepEqual(state.recipients.map((r: { address: string; status?: string }) => [r.address, r.status ?? 'pending']),
    [['ok@dest.test', 'delivered'], ['bad@dest.test', 'bounced'], ['later1@dest.test', 'pending']]);
  await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
  const copies = sink.messages.filter((m) => m.from === 'me@origin.test' && m.to.some((t) => ['ok@dest.test', 'later1@dest.test'].includes(t)));
  assert.deepEqual(copies.map((m) => m.to), [['ok@dest.test'], ['later1@dest.test']], 'the retry carried only the pending recipient');

  await sink.waitFor(sink.messages.length); // the bounce is delivered through the same route
  await until('the bounce to me@origin.test at the sink', () => dsnTo('me@origin.test').length > 0);
  const dsn = parseDsn(dsnTo('me@origin.test')[0]!.data);
  assert.equal(dsn.headers.from, 'Mail Delivery System <MAILER-DAEMON@postern.test>');
  assert.equal(dsn.headers['auto-submitted'], 'auto-replied');
  assert.equal(dsn.perMessage['x-postern-queue-id'], id);
  assert.equal(dsn.recipients.length, 1, 'only the refused recipient');
  const r = dsn.recipients[0]!;
  assert.equal(r['final-recipient'], 'rfc822; bad@dest.test');
  assert.equal(r.action, 'failed');
  assert.equal(r.status, '5.1.1');
  assert.equal(r['remote-mta'], 'dns; 127.0.0.1');
  assert.equal(r['diagnostic-code'], 'smtp; 550 5.1.1 <bad@dest.test>: Recipient address rejected: User unknown');
  assert.match(dsn.text, /<bad@dest\.test>: host 127\.0\.0\.1\[127\.0\.0\.1\]:\d+ said: 550 5\.1\.1/);
  assert.match(dsn.returnedHeader, /^Received: .*\r\n(.*\r\n)*Subject: test\r\n$/);
});

test('no bounce for the null sender or for NOTIFY=NEVER; NOTIFY=FAILURE still gets one', async () => {
  const c = await SmtpTestClient.connect(s.port());
  await c.hello();
  const send = (from: string, rcpts: string[]): Promise<string> => sendWithParams(c, `<${from}>`, rcpts, 'Subject: n\r\n\r\nx\r\n');
  const nullSender = await send('', ['<bad-null@dest.test>']);
  const never = await send('never@origin.test', ['<bad-never@dest.test> NOTIFY=NEVER']);
  const failure = await send('failure@origin.test', ['<bad-failure@dest.test> NOTIFY=FAILURE,DELAY']);
  await c.quit();
  const events = await Promise.all([nullSender, never, failure].map((id) => s.nextAttempt((e) => e.id === id && e.removed, { past: true })));
  assert.deepEqual(events.map((e) => !!e.bounceId), [false, false, true]);
  assert.ok(s.logs.some((l) => l.msg === 'undeliverable bounce (null sender): discarded' && l.id === nullSender));
});

// NOTIFY=SUCCESS was kept with the recipient but never acted on: a sender who asked to be told of the delivery
// heard nothing (RFC 3461 §6.2.3: the next hop is not asked for notifications, so the relay sends a "relayed" one).
test('NOTIFY=SUCCESS gets a relayed notice once delivered; the default, FAILURE alone and NEVER get none', async () => {
  const c = await SmtpTestClient.connect(s.port());
  await c.hello();
  const send = (from: string, rcpts: string[]): Promise<string> => sendWithParams(c, `<${from}>`, rcpts, 'Subject: tell me\r\n\r\nx\r\n');
  const asked = await send('asked@origin.test', ['<ok-success@dest.test> NOTIFY=SUCCESS,FAILURE', '<ok-plain@dest.test>', '<bad-success@dest.test> NOTIFY=SUCCESS']);
  const quiet = await send('quiet@origin.test', ['<ok-never@dest.test> NOTIFY=NEVER', '<ok-failure@dest.test> NOTIFY=FAILURE']);
  const fromNull = await send('', ['<ok-null@dest.test> NOTIFY=SUCCESS']);
  await c.quit();
  const events = await Promise.all([asked, quiet, fromNull].map((id) => s.nextAttempt((e) => e.id === id && e.removed, { past: true })));
  assert.deepEqual(events.map((e) => e.bounceId), [null, null, null], 'no failure notice: bad-success@ asked for successes only');
  await until('the success notice delivered', () => dsnTo('asked@origin.test').length === 1);
  const dsn = parseDsn(dsnTo('asked@origin.test')[0]!.data);
  assert.equal(dsn.headers['subject'], 'Successful Mail Delivery Report');
  assert.deepEqual(dsn.recipients.map((r) => [r['final-recipient'], r.action, r.status]), [['rfc822; ok-success@dest.test', 'relayed', '2.0.0']]);
  assert.match(dsn.recipients[0]!['diagnostic-code']!, /^smtp; 250 /);
  assert.match(dsn.returnedHeader, /^Subject: tell me\r\n/m);
  await s.scans(2);
  assert.equal(dsnTo('quiet@origin.test').length, 0);
  assert.equal(dsnTo('asked@origin.test').length, 1);
});

test('pre-delivery reject bounces at once with the script\'s reply; defer retries with the reason in previousErrors', async () => {
  const refused = await s.send('me@origin.test', ['x@refused.test']);
  const e = await s.nextAttempt((x) => x.id === refused, { past: true });
  assert.equal(e.removed, true);
  assert.deepEqual(e.outcomes.map((o) => [o.status, o.reply]), [['permanent', '554 5.7.1 Policy says no']]);
  // Settled without a transaction, yet logged like every delivery attempt, with the script that decided.
  const bounced = s.logs.filter((l) => l.id === refused && l.status);
  assert.deepEqual(bounced.map((l) => [l.status, l.relay, l.reason]), [['bounced', 'none', 'script predelivery: reject']]);
  assert.match(String(bounced[0]!.msg), new RegExp(`^${refused}: to=<x@refused\\.test>, relay=none, delay=[\\d.]+, attempt=1, tls=none, client_certificate=none, status=bounced \\(554 5\\.7\\.1 Policy says no\\)$`));
  await until('the bounce for the refused message at the sink', () => sink.messages.some((m) => m.from === '' && m.data.toString().includes(refused)));
  const dsn = parseDsn(sink.messages.find((m) => m.from === '' && m.data.toString().includes(refused))!.data);
  assert.equal(dsn.recipients[0]!.status, '5.7.1');
  assert.equal(dsn.recipients[0]!['diagnostic-code'], 'X-Postern; 554 5.7.1 Policy says no');
  assert.equal(dsn.recipients[0]!['remote-mta'], undefined);

  const held = await s.send('me@origin.test', ['y@held.test']);
  const done = await s.nextAttempt((x) => x.id === held && x.removed, { past: true });
  assert.equal(done.attempt, 3);
  const ctx = s.logs.filter((l) => String(l.msg).startsWith('CTX ') && String(l.msg).includes(held)).map((l) => JSON.parse(String(l.msg).slice(4)));
  assert.deepEqual(ctx.map((m) => m.attempt), [1, 2, 3]);
  assert.deepEqual(ctx[2].previousErrors, ['y@held.test: 451 4.3.0 Held for review', 'y@held.test: 451 4.3.0 Held for review']);
  assert.deepEqual(s.logs.filter((l) => l.id === held && l.status).map((l) => [l.attempt, l.status, l.reason ?? null, l.reply]), [
    [1, 'deferred', 'script predelivery: defer', '451 4.3.0 Held for review'],
    [2, 'deferred', 'script predelivery: defer', '451 4.3.0 Held for review'],
    [3, 'sent', null, s.logs.find((l) => l.id === held && l.status === 'sent')?.reply],
  ]);
});

test('a mail loop (50 Received headers, ours the 51st) is refused at the end of DATA, not accepted and bounced', async () => {
  // The queue's own check (more than 50 when it leaves) is reached only past the door: test/queue/loop-count.test.ts.
  const loop = Array.from({ length: 50 }, (_, i) => `Received: from hop${i}.example by hop${i + 1}.example; Mon, 1 Jan 2026 00:00:00 +0000\r\n`).join('');
  const before = s.attempts.length;
  await assert.rejects(s.send('me@origin.test', ['z@dest.test'], `${loop}Subject: loop\r\n\r\nx\r\n`), /not queued: 554 5\.4\.6 Error: too many hops/);
  const id = await s.send('me@origin.test', ['z2@dest.test'], 'Subject: after the loop\r\n\r\nx\r\n'); // a message after it
  await s.nextAttempt((x) => x.id === id && x.removed, { past: true });
  assert.deepEqual(s.attempts.slice(before).map((a) => a.id), [id], 'nothing of the loop was queued, and no bounce');
  assert.equal(sink.messages.filter((m) => m.to.includes('z@dest.test')).length, 0);
});

test('connections are reused between messages to the same next hop; a closed idle one is replaced', async () => {
  const before = sink.connections;
  for (let i = 0; i < 5; i++) {
    const id = await s.send('me@origin.test', [`reuse${i}@dest.test`]);
    await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
  }
  const used = sink.connections - before;
  assert.ok(used <= 1, `five sequential messages, at most one new connection (${used})`);
  await sink.waitForClosed(sink.connections); // the pool closes (QUITs) an idle connection after 5 s
  const id = await s.send('me@origin.test', ['reuse-after@dest.test']);
  await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
  assert.equal(sink.connections - before, used + 1);
});
