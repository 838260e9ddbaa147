/** The memory store: fixed windows that open with the first counted call, counters with a ttl, sweeping. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryCounterStore } from '../../engine/store/index.ts';

test('rate(): up to limit per window, denied calls not counted, a new window after it ends', async () => {
  let now = 1000;
  const store = new MemoryCounterStore(() => now);
  assert.deepEqual(await store.rate('k', 2, 10), { allowed: true, count: 1, resetSeconds: 10 });
  now += 4000;
  assert.deepEqual(await store.rate('k', 2, 10), { allowed: true, count: 2, resetSeconds: 6 });
  assert.deepEqual(await store.rate('k', 2, 10), { allowed: false, count: 2, resetSeconds: 6 });
  assert.deepEqual(await store.rate('other', 2, 10), { allowed: true, count: 1, resetSeconds: 10 });
  now += 6000; // the window opened at 1000 ends at 11000
  assert.deepEqual(await store.rate('k', 2, 10), { allowed: true, count: 1, resetSeconds: 10 });
});

test('counters: add creates with a ttl, later adds keep it; get of an expired counter is 0', async () => {
  let now = 0;
  const store = new MemoryCounterStore(() => now);
  assert.equal(await store.get('c'), 0);
  assert.equal(await store.add('c', 3, 5), 3);
  now = 4000;
  assert.equal(await store.add('c', 2, 500), 5);
  now = 5000;
  assert.equal(await store.get('c'), 0);
});

test('expired keys are swept out once many accumulate', async () => {
  let now = 0;
  const store = new MemoryCounterStore(() => now);
  for (let i = 0; i < 10_000; i++) await store.rate(`k${i}`, 1, 1);
  assert.equal(store.size, 10_000);
  now = 2000;
  await store.rate('fresh', 1, 1);
  assert.equal(store.size, 1);
});
