// The small pieces: reply parsing, retry timing, the due queue, limiters, DSN layout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { oneLine, outcomeForReply, parseReply } from '../../engine/delivery/outcome.ts';
import { Limiter } from '../../engine/delivery/limiter.ts';
import { addressLiteral, groupByDomain } from '../../engine/delivery/routing.ts';
import { isExpired, retryDelayMs } from '../../engine/queue/schedule.ts';
import { DueQueue } from '../../engine/queue/due-queue.ts';
import { buildDsn } from '../../engine/queue/dsn.ts';
import { parseDsn } from './helpers/server.ts';

test('SMTP replies: codes, enhanced codes, multi-line, classification', () => {
  assert.deepEqual(parseReply('550 5.1.1 <x@y>: User unknown'), { code: 550, enhanced: '5.1.1', text: '<x@y>: User unknown' });
  assert.deepEqual(parseReply('451 Try later'), { code: 451, enhanced: null, text: 'Try later' });
  assert.deepEqual(parseReply('550 4.1.1 mismatched class'), { code: 550, enhanced: null, text: '4.1.1 mismatched class' });
  assert.equal(oneLine('550-5.7.1 first\n550-5.7.1 second\n550 5.7.1 third'), '550 5.7.1 first 5.7.1 second 5.7.1 third');
  assert.equal(outcomeForReply('a@b', '250 2.0.0 Ok', null).status, 'delivered');
  assert.equal(outcomeForReply('a@b', '421 4.7.0 closing', null).status, 'temporary');
  assert.equal(outcomeForReply('a@b', '503 5.5.1 bad sequence', null).status, 'temporary', '503 is not a verdict on the message');
  const perm = outcomeForReply('a@b', '554 Relay access denied', 'mx[1.2.3.4]:25');
  assert.deepEqual([perm.status, perm.enhanced, perm.remoteMta], ['permanent', '5.0.0', 'mx[1.2.3.4]:25']);
});

test('retry delays follow the schedule and repeat its last step; maximum age', () => {
  const d = { retrySchedule: [60, 300, 900] };
  assert.deepEqual([1, 2, 3, 4, 10].map((n) => retryDelayMs(d, n)), [60_000, 300_000, 900_000, 900_000, 900_000]);
  const received = '2026-01-01T00:00:00.000Z';
  assert.equal(isExpired({ maxAgeHours: 120 }, received, Date.parse(received) + 119 * 3600_000), false);
  assert.equal(isExpired({ maxAgeHours: 120 }, received, Date.parse(received) + 120 * 3600_000), true);
});

test('due queue: earliest first, re-timing and deletion', () => {
  const q = new DueQueue();
  for (const [id, t] of [['c', 30], ['a', 10], ['b', 20], ['d', 40]] as const) q.set(id, t);
  q.set('d', 5);
  q.delete('b');
  assert.equal(q.takeDue(4), null);
  const out: string[] = [];
  for (let id = q.takeDue(100); id; id = q.takeDue(100)) out.push(id);
  assert.deepEqual(out, ['d', 'a', 'c']);
  assert.equal(q.size, 0);
});

test('limiter: never more than the limit at once, first come first served', async () => {
  const l = new Limiter(() => 2);
  let running = 0;
  let peak = 0;
  const order: number[] = [];
  await Promise.all(Array.from({ length: 6 }, async (_, i) => {
    const release = await l.acquire();
    running++;
    peak = Math.max(peak, running);
    order.push(i);
    await new Promise((r) => setTimeout(r, 5));
    running--;
    release();
  }));
  assert.equal(peak, 2);
  assert.deepEqual(order, [0, 1, 2, 3, 4, 5]);
});

test('routing helpers: grouping by domain, address literals', () => {
  assert.deepEqual([...groupByDomain(['a@X.test', 'b@y.test', 'c@x.test'])], [['x.test', ['a@X.test', 'c@x.test']], ['y.test', ['b@y.test']]]);
  assert.equal(addressLiteral('[192.0.2.1]'), '192.0.2.1');
  assert.equal(addressLiteral('[IPv6:2001:db8::1]'), '2001:db8::1');
  assert.equal(addressLiteral('example.com'), null);
});

test('DSN: RFC 3464 fields per recipient, UTF-8 text, header only of the original', () => {
  const raw = buildDsn({
    hostname: 'mx.example', original: { id: 'abc123def', sender: 'jörg@example.org', receivedAt: '2026-01-01T00:00:00Z' },
    originalMessage: Buffer.from('Received: x\r\nSubject: hi\r\n\r\nsecret body\r\n'),
    failed: [
      { recipient: 'a@x.test', status: '5.1.1', diagnostic: '550 5.1.1 unknown', remoteReply: true, remoteMta: 'mx.x.test[192.0.2.1]:25' },
      { recipient: 'b@y.test', status: '4.4.1', diagnostic: 'connection refused', remoteReply: false, remoteMta: null },
    ],
    expired: true,
    now: new Date('2026-01-06T00:00:00Z'),
  });
  const dsn = parseDsn(raw);
  assert.equal(dsn.headers.subject, 'Undelivered Mail Returned to Sender');
  assert.equal(dsn.perMessage['arrival-date'], 'Thu, 1 Jan 2026 00:00:00 +0000');
  assert.deepEqual(dsn.recipients.map((r) => [r['final-recipient'], r.status, r['remote-mta'], r['diagnostic-code']]), [
    ['rfc822; a@x.test', '5.1.1', 'dns; mx.x.test', 'smtp; 550 5.1.1 unknown'],
    ['rfc822; b@y.test', '4.4.1', undefined, 'X-Postern; connection refused'],
  ]);
  assert.equal(dsn.returnedHeader, 'Received: x\r\nSubject: hi\r\n');
  assert.doesNotMatch(raw.toString(), /secret body/);
  assert.match(raw.toString(), /charset=us-ascii/);
  assert.ok(raw.toString().split('\r\n').every((l) => Buffer.byteLength(l) <= 998));
});
