// The small pieces of delivery: reply parsing, limiters, routing helpers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { oneLine, outcomeForReply, parseReply } from '../../engine/delivery/outcome.ts';
import { Limiter } from '../../engine/delivery/limiter.ts';
import { addressLiteral, groupByDomain } from '../../engine/delivery/routing.ts';

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

test('limiter: a freed slot goes round the owners that wait, oldest first within each', async () => {
  const l = new Limiter(() => 1);
  const first = await l.acquire('list');
  const order: string[] = [];
  const wait = (owner: string, n: number): Promise<void> => l.acquire(owner).then((release) => { order.push(`${owner}${n}`); release(); });
  // The list's four other transactions wait before the single one of another message, and one without an owner.
  const waits = [wait('list', 1), wait('list', 2), wait('list', 3), wait('list', 4), wait('other', 1), l.acquire().then((r) => { order.push('anonymous'); r(); })];
  assert.equal(l.waiting, 6);
  first();
  await Promise.all(waits);
  assert.deepEqual(order, ['list1', 'other1', 'anonymous', 'list2', 'list3', 'list4']);
  assert.equal(l.busy, 0);
});

test('routing helpers: grouping by domain, address literals', () => {
  assert.deepEqual([...groupByDomain(['a@X.test', 'b@y.test', 'c@x.test'])], [['x.test', ['a@X.test', 'c@x.test']], ['y.test', ['b@y.test']]]);
  assert.equal(addressLiteral('[192.0.2.1]'), '192.0.2.1');
  assert.equal(addressLiteral('[IPv6:2001:db8::1]'), '2001:db8::1');
  assert.equal(addressLiteral('example.com'), null);
});
