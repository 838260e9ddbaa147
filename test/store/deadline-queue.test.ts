/** The store's shared time limit: calls still waiting expire at their deadline, in order; answered ones never do. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DeadlineQueue, type Waiting } from '../../engine/store/deadline-queue.ts';
import { until } from '../helpers/wait.ts';

function call(queue: DeadlineQueue, ms: number, expired: number[], id: number): Waiting {
  const w: Waiting = { deadline: performance.now() + ms, settled: false, expire: () => { w.settled = true; expired.push(id); } };
  queue.add(w);
  return w;
}

test('calls not answered expire at their deadline, oldest first; answered ones are skipped; the queue empties', async () => {
  const queue = new DeadlineQueue();
  const expired: number[] = [];
  const calls = Array.from({ length: 3000 }, (_, i) => call(queue, 30, expired, i));
  for (const [i, w] of calls.entries()) if (i % 3 !== 0) queue.settle(w); // answered in time
  const late = call(queue, 60, expired, 9999);
  await until('the late call to expire', () => late.settled, { intervalMs: 5 });
  assert.deepEqual(expired, [...calls.keys()].filter((i) => i % 3 === 0).concat(9999));
  // Nothing left: a new call still gets its own timer.
  const again: number[] = [];
  const w = call(queue, 10, again, 1);
  await until('the new call to expire', () => w.settled, { intervalMs: 5 });
  assert.deepEqual(again, [1]);
});

test('expireAll() ends every call still waiting at once', () => {
  const queue = new DeadlineQueue();
  const expired: number[] = [];
  const a = call(queue, 60_000, expired, 1);
  queue.settle(call(queue, 60_000, expired, 2));
  call(queue, 60_000, expired, 3);
  queue.expireAll();
  assert.deepEqual(expired, [1, 3]);
  assert.ok(a.settled);
});

test('calls answered in order leave nothing behind; one still waiting expires alone', async () => {
  const queue = new DeadlineQueue();
  const expired: number[] = [];
  for (let i = 0; i < 10_000; i++) queue.settle(call(queue, 20, expired, i));
  const stuck = call(queue, 20, expired, -1);
  for (let i = 0; i < 10; i++) queue.settle(call(queue, 20, expired, i));
  await until('the waiting call to expire', () => stuck.settled, { intervalMs: 5 });
  assert.deepEqual(expired, [-1]);
});

