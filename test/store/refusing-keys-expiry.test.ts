/**
 * The memory store's keys at their rate() limit (held apart, dropped last) once their window has ended: they are
 * no longer refusing anything, and must not be kept over live counts while a full side makes room. A full side
 * sweeps expired keys at most once a second; between two sweeps the room was made by dropping live keys (a
 * counter() total, a sender's count half way to its limit) while every expired refusing key stayed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryCounterStore } from '../../engine/store/index.ts';

test('bounded: between two sweeps of a full side, refusing keys whose window ended go before live keys', async () => {
  let now = 0;
  const store = new MemoryCounterStore(() => now, { maxKeys: 100 });
  for (let i = 0; i < 10; i++) await store.add(`older${i}`, 1, 3600);
  for (let i = 0; i < 89; i++) await store.rate(`refused${i}`, 1, 1); // at their limit at once, for 1 s
  assert.equal((await store.rate('refused0', 1, 1)).allowed, false);
  await store.rate('sender', 10, 3600); // live: 1 of 10
  assert.equal(store.size, 100);
  now = 900; // full: a sweep now (nothing has expired yet), and one of the older keys dropped
  await store.add('new0', 1, 3600);
  now = 1500; // the refusing windows have ended; the last sweep was 600 ms ago
  for (let i = 1; i <= 20; i++) await store.add(`new${i}`, 1, 3600);
  assert.equal(await store.get('sender'), 1, 'the live count is kept while keys that refuse nothing any more can go');
  assert.equal(await store.get('older9'), 1);
  assert.equal((await store.rate('refused0', 1, 1)).allowed, true, 'a refusal whose window ended is over');
  assert.ok(store.size <= 100);
});

test('bounded: a key no longer at its limit (the limit raised by a reload) is not kept over the others', async () => {
  const store = new MemoryCounterStore(() => 0, { maxKeys: 100 });
  await store.rate('raised', 1, 3600); // at its limit of 1
  await store.rate('raised', 5, 3600); // the limit raised: 2 of 5, refusing nothing
  for (let i = 0; i < 10; i++) await store.add(`counter${i}`, 1, 3600);
  for (let i = 0; i < 89; i++) await store.rate(`refused${i}`, 1, 3600);
  for (let i = 0; i < 5; i++) await store.add(`new${i}`, 1, 3600);
  assert.equal(await store.get('raised'), 0, 'the oldest key not at its limit went first');
  assert.equal(await store.get('counter9'), 1);
  for (let i = 0; i < 89; i++) assert.equal((await store.rate(`refused${i}`, 1, 3600)).allowed, false, `refused${i} still refused`);
});

test('bounded: a live refusing key that reached its limit first is not dropped while refusing keys behind it have expired', async () => {
  let now = 0;
  const store = new MemoryCounterStore(() => now, { maxKeys: 100 });
  await store.rate('victim', 1, 3600); // refused for an hour: the first to reach its limit
  for (let i = 0; i < 98; i++) await store.rate(`short${i}`, 1, 1); // at their limit for 1 s
  await store.add('counter', 1, 3600);
  assert.equal(store.size, 100);
  now = 500; // full: a sweep (nothing has expired), the counter dropped; the new key at its limit at once
  await store.rate('new0', 1, 1);
  now = 1200; // the short windows have ended; the last sweep was 700 ms ago, so none now
  await store.rate('new1', 1, 1); // no key below its limit left: a refusing one goes, an expired one first
  assert.equal((await store.rate('victim', 1, 3600)).allowed, false, 'the refusal was undone while 98 keys that refuse nothing were kept');
  assert.ok(store.size <= 100);
});
