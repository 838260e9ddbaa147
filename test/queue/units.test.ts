// The small pieces of the queue: retry timing, the due queue, DSN layout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isExpired, retryDelayMs } from '../../engine/queue/schedule.ts';
import { DueQueue } from '../../engine/queue/due-queue.ts';
import { ClockSteps } from '../../engine/queue/clock-steps.ts';
import { buildDsn } from '../../engine/queue/dsn.ts';
import { noticeId, withdrawNoticesOfDeleted } from '../../engine/queue/bounce.ts';
import { ByteBudget } from '../../engine/queue/byte-budget.ts';
import { parseDsn } from '../helpers/delivery-server.ts';

test('retry delays follow the schedule and repeat its last step; maximum age', () => {
  const d = { retrySchedule: [60, 300, 900] };
  assert.deepEqual([1, 2, 3, 4, 10].map((n) => retryDelayMs(d, n)), [60_000, 300_000, 900_000, 900_000, 900_000]);
  const received = '2026-01-01T00:00:00.000Z';
  assert.equal(isExpired({ maxAgeHours: 120 }, received, Date.parse(received) + 119 * 3600_000), false);
  assert.equal(isExpired({ maxAgeHours: 120 }, received, Date.parse(received) + 120 * 3600_000), true);
});

test('clock steps: a step forward is left out of the age of what came before it; a slew is not a step; a step back undoes it', () => {
  const H = 3600_000;
  let wall = 1_000 * H;
  let mono = 0;
  const steps = new ClockSteps(() => wall, () => mono);
  const before = wall;
  mono += H; wall += H + 30_000; // an hour, slewed by 30 s
  assert.equal(steps.observe(), null);
  assert.equal(steps.elapsedSince(before), H + 30_000);
  wall += 48 * H; // stepped two days forward
  assert.deepEqual(steps.observe(), { after: wall, ms: 48 * H });
  const after = wall;
  mono += H; wall += H;
  assert.equal(steps.elapsedSince(before), 2 * H + 30_000, 'queued before the step: two hours old, not two days');
  assert.equal(steps.elapsedSince(after), H, 'queued after it: its own age');
  assert.equal(isExpired({ maxAgeHours: 24 }, new Date(before).toISOString(), wall, (t, now) => steps.elapsedSince(t, now)), false);
  assert.equal(isExpired({ maxAgeHours: 24 }, new Date(before).toISOString(), wall), true, 'on the wall clock alone it had expired');
  wall -= 48 * H; // put right
  assert.equal(steps.observe(), null);
  assert.equal(steps.elapsedSince(before), 2 * H + 30_000, 'the clock is right again: its age is the wall clock\'s');
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

test('due queue: new mail and retries take turns when both are due; each lane earliest first', () => {
  const q = new DueQueue();
  for (const [id, t] of [['r1', 1], ['r2', 2], ['r3', 3], ['r4', 4]] as const) q.set(id, t);
  q.set('n2', 20, 'new');
  q.set('n1', 10, 'new');
  assert.equal(q.takeDue(5), 'r1', 'no new mail due yet: retries');
  const out: string[] = [];
  for (let id = q.takeDue(100); id; id = q.takeDue(100)) out.push(id);
  assert.deepEqual(out, ['n1', 'r2', 'n2', 'r3', 'r4']);
  q.set('x', 50, 'new');
  q.set('x', 40); // re-timed into the retry lane: the stale new entry is skipped
  assert.deepEqual(q.peek(), { id: 'x', time: 40 });
  assert.equal(q.takeDue(100), 'x');
  assert.equal(q.takeDue(100), null);
  assert.equal(q.size, 0);
});

test('DSN: RET=FULL returns the whole message when 7-bit and within 1 MiB, else the header with a note', () => {
  const bounce = (body: string, ret: 'FULL' | 'HDRS' = 'FULL'): string => buildDsn({
    hostname: 'mx.example', original: { id: 'abc123def', sender: 'a@example.org', receivedAt: '2026-01-01T00:00:00Z', dsn: { ret } },
    originalMessage: Buffer.from(`Subject: hi\r\n\r\n${body}\r\n`),
    failed: [{ recipient: 'a@x.test', status: '5.1.1', diagnostic: '550 5.1.1 unknown', remoteReply: true, remoteMta: null }], expired: false,
  }).toString('latin1');
  const whole = bounce('secret body');
  assert.match(whole, /Content-Type: message\/rfc822\r\n\r\nSubject: hi\r\n\r\nsecret body\r\n/);
  assert.doesNotMatch(bounce('secret body', 'HDRS'), /secret body/);
  for (const [body, why] of [['x'.repeat(1024 * 1024), /larger than 1024 KiB/], ['b\u00e4r', /8-bit content/]] as const) {
    const raw = bounce(body);
    assert.match(raw, /RET=FULL\): /);
    assert.match(raw, why);
    assert.match(raw, /Content-Type: text\/rfc822-headers/);
    assert.ok(raw.split('\r\n').every((l) => l.length <= 998) && /^[\x00-\x7f]*$/.test(raw), '7-bit, short lines');
  }
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

test('byte budget: granted in order within the limit; one request over the limit once nothing is held; a release counts once', async () => {
  const budget = new ByteBudget(() => 10);
  const granted: string[] = [];
  const take = (name: string, bytes: number): Promise<() => void> => budget.take(bytes).then((release) => { granted.push(name); return release; });
  const a = await take('a', 6);
  const big = take('big', 30); // over the whole limit: waits for nothing held
  const small = take('small', 1); // fits beside a, but is behind big: not overtaking it
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(granted, ['a']);
  assert.equal(budget.waiting, 2);
  a();
  a(); // twice: no effect
  const releaseBig = await big;
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(granted, ['a', 'big'], 'small waits while big is held');
  assert.equal(budget.held, 30);
  releaseBig();
  (await small)();
  assert.equal(budget.held, 0);
  assert.deepEqual(granted, ['a', 'big', 'small']);
  assert.ok((await budget.take(0)) instanceof Function);
  assert.equal(budget.held, 0, 'zero bytes hold nothing');
});

test('withdrawing a deleted message\'s notices: a notice gone (ENOENT) or damaged is passed over; a read the disk failed (EIO) fails the withdrawal, not taken for gone', async () => {
  const two = new Set([noticeId('m1', 'failure', 1, 0), noticeId('m1', 'failure', 1, 1)]);
  const failing = (err: Error) => ({
    hasNotice: async (id: string) => two.has(id),
    readEnvelope: async () => { throw err; },
    updateState: async () => { throw new Error('nothing to update'); },
  }) as unknown as Parameters<typeof withdrawNoticesOfDeleted>[0];
  const coded = (code: string) => Object.assign(new Error(code), { code });
  assert.deepEqual(await withdrawNoticesOfDeleted(failing(coded('ENOENT')), 'm1', 1), []);
  assert.deepEqual(await withdrawNoticesOfDeleted(failing(new Error('malformed trailer')), 'm1', 1), []);
  await assert.rejects(withdrawNoticesOfDeleted(failing(coded('EIO')), 'm1', 1), /EIO/);
});
