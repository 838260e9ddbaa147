/** The memory store: fixed windows that open with the first counted call, counters with a ttl, sweeping. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryCounterStore } from '../../engine/store/index.ts';
import { claimAccountGuess } from '../../engine/auth/account-failures.ts';

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

test('rate(): a window shortened (a reload) ends within the new length, not the one it opened with', async () => {
  let now = 0;
  const store = new MemoryCounterStore(() => now);
  // messagesPerIdentity: { count: 1, windowSeconds: 2678400 } by mistake, then 3600.
  assert.equal((await store.rate('limit:mail:alice', 1, 2_678_400)).allowed, true);
  assert.deepEqual(await store.rate('limit:mail:alice', 1, 2_678_400), { allowed: false, count: 1, resetSeconds: 2_678_400 });
  assert.deepEqual(await store.rate('limit:mail:alice', 1, 3600), { allowed: false, count: 1, resetSeconds: 3600 });
  now += 3600_000;
  assert.deepEqual(await store.rate('limit:mail:alice', 1, 3600), { allowed: true, count: 1, resetSeconds: 3600 });
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

test('bounded: a flood of distinct script keys with long windows stays within maxKeys, oldest dropped (not those at their limit), and told', async () => {
  let now = 0;
  const told: number[] = [];
  const store = new MemoryCounterStore(() => now, { maxKeys: 1000, onEvict: (dropped) => told.push(dropped) });
  await store.rate('script:rate:first', 2, 31_000_000);
  await store.rate('script:rate:refused', 1, 31_000_000);
  for (let i = 0; i < 50_000; i++) {
    await store.rate(`script:rate:flood${i}`, 10, 31_000_000);
    if (i % 1000 === 0) now += 1; // a clock that moves, slowly
  }
  assert.ok(store.size <= 1000, `held ${store.size} keys`);
  // The newest keys are kept, the oldest went first: `first` counts from 0 again.
  assert.deepEqual(await store.rate('script:rate:flood49999', 10, 31_000_000), { allowed: true, count: 2, resetSeconds: 31_000_000 });
  assert.deepEqual(await store.rate('script:rate:first', 2, 31_000_000), { allowed: true, count: 1, resetSeconds: 31_000_000 }, 'the oldest key was dropped');
  assert.equal((await store.rate('script:rate:refused', 1, 31_000_000)).allowed, false, 'a key at its limit was kept: dropping it would undo its refusal');
  assert.ok(told.length >= 1 && told.reduce((a, b) => a + b, 0) > 0, 'dropping keys is told');
  assert.ok(told.length <= 60, `told at most about once a second of store clock, not per key (${told.length})`);
});

test('bounded: scripts\' keys never push out a built-in limit\'s count (limit:…)', async () => {
  const store = new MemoryCounterStore(() => 0, { maxKeys: 1000 });
  assert.equal(await store.add('limit:messages:alice', 7, 3600), 7);
  for (let i = 0; i < 20_000; i++) await store.add(`script:counter:k${i}`, 1, 3600);
  assert.equal(await store.get('limit:messages:alice'), 7);
  assert.ok(store.size <= 1001);
});

test('bounded: a full side where every key is at its limit drops the oldest of them, stays within maxKeys, and says so', async () => {
  const told: Array<[number, number]> = [];
  const store = new MemoryCounterStore(() => 0, { maxKeys: 1000, onEvict: (dropped, _max, refusing) => told.push([dropped, refusing]) });
  for (let i = 0; i < 100_000; i++) await store.rate(`script:rate:k${i}`, 1, 3600);
  assert.ok(store.size <= 1000, `held ${store.size} keys`);
  assert.equal((await store.rate('script:rate:k0', 1, 3600)).allowed, true, 'the oldest went');
  assert.equal((await store.rate('script:rate:k99999', 1, 3600)).allowed, false, 'the newest stayed');
  assert.ok(told.length >= 1 && told[0]![1] > 0, 'refusing keys dropped are told as such');
});

test('bounded: at a full store expired keys go first, before live ones', async () => {
  let now = 0;
  const store = new MemoryCounterStore(() => now, { maxKeys: 1000 });
  assert.equal(await store.add('script:counter:old-live', 1, 3600), 1);
  for (let i = 0; i < 999; i++) await store.rate(`script:rate:short${i}`, 1, 1);
  now = 5000; // the short windows ended; old-live has not
  for (let i = 0; i < 500; i++) await store.rate(`script:rate:new${i}`, 1, 3600);
  assert.equal(await store.get('script:counter:old-live'), 1, 'a live key survives while expired ones can go');
});

test('a password guess\'s place given back after its window ended does not make the next window one place larger', async () => {
  let now = 0;
  const store = new MemoryCounterStore(() => now);
  const limit = { count: 2, windowMs: 10_000 };
  const right = await claimAccountGuess(store, limit, 'alice@example.com', '198.51.100.7');
  now += 10_000; // the argon2 check and the auth script outlived the window
  await right.settle(false);
  const next = [];
  for (let i = 0; i < 3; i++) next.push((await claimAccountGuess(store, limit, 'alice@example.com', '203.0.113.9')).deferred);
  assert.deepEqual(next, [false, false, true], 'the limit in the next window, not one guess more');
});

test('rate(): resetSeconds is never more than the window, whatever fraction of a millisecond the clock is at', async () => {
  const now = 5536.5866206; // now + 60 000 − now is 60000.00000000001 in floating point
  const store = new MemoryCounterStore(() => now);
  assert.deepEqual(await store.rate('k', 2, 60), { allowed: true, count: 1, resetSeconds: 60 });
});
