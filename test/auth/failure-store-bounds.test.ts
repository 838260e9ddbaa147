// The per-address AUTH failure times in memory (one process's, a worker's shared copy, the supervisor's) under
// failures from very many addresses: an attacker with a /48 has 65 536 IPv6 /64s, each counted apart. Past
// 10 000 addresses every failure walked the whole map (13 ms of the event loop per failed AUTH at 15 000,
// growing with each: the supervisor, which also serves the memory store, stalled), and nothing bounded it.
// Now a failure touches the addresses it drops and little else, and at most MAX_FAILING_ADDRESSES are kept,
// the ones whose latest failure is oldest forgotten first. Work is counted (map reads), not timed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_FAILING_ADDRESSES, MemoryAuthFailureStore } from '../../engine/auth/failure-limiter.ts';
import { CounterHost, SharedFailureStore } from '../../engine/cluster/shared-counters.ts';

const WINDOW_MS = 600_000;

/** A failure map that counts its reads. */
class CountingMap extends Map<string, number[]> {
  reads = 0;
  override get(key: string): number[] | undefined {
    this.reads++;
    return super.get(key);
  }
}

test('one more failure among 20 000 failing addresses reads a few of them, not all', async () => {
  const now = Date.now();
  const failures = new CountingMap();
  for (let i = 0; i < 20_000; i++) failures.set(`2001:db8:${i.toString(16)}::/64`, [now - 1000 + i / 100]);
  const store = new MemoryAuthFailureStore(failures);
  failures.reads = 0;
  assert.equal(await store.add('2001:db8:ffff::/64', now, now - WINDOW_MS), 1);
  assert.ok(failures.reads < 10, `${failures.reads} addresses read for one failure`);
  assert.equal(failures.size, 20_001);
  // Expired ones are dropped from the oldest end as failures come.
  const store2 = new MemoryAuthFailureStore(new Map([['stale', [now - WINDOW_MS - 1]], ['live', [now - 10]]]));
  assert.equal(await store2.add('new', now, now - WINDOW_MS), 1);
  assert.equal(await store2.count('stale', now - WINDOW_MS), 0);
  assert.equal(await store2.count('live', now - WINDOW_MS), 1);
});

test('at most MAX_FAILING_ADDRESSES addresses are kept: those whose latest failure is oldest go first; one failing again moves to the newest end', async () => {
  const now = Date.now();
  const failures = new Map<string, number[]>();
  for (let i = 0; i < MAX_FAILING_ADDRESSES; i++) failures.set(`a${i}`, [now - 1000]);
  const store = new MemoryAuthFailureStore(failures);
  assert.equal(await store.add('a0', now, now - WINDOW_MS), 2, 'a0 fails again: its count goes on, and it is the newest now');
  for (let i = 0; i < 5; i++) await store.add(`new${i}`, now, now - WINDOW_MS);
  assert.equal(failures.size, MAX_FAILING_ADDRESSES);
  assert.equal(await store.count('a0', now - WINDOW_MS), 2, 'kept: it failed last');
  for (let i = 1; i <= 5; i++) assert.equal(await store.count(`a${i}`, now - WINDOW_MS), 0, `a${i} forgotten`);
  assert.equal(await store.count('a6', now - WINDOW_MS), 1);
  assert.equal(await store.count('new4', now - WINDOW_MS), 1);
});

test('a worker\'s copy of every worker\'s failures, and the supervisor\'s table, are bounded the same way', { timeout: 120_000 }, () => {
  const now = Date.now();
  const copy = new SharedFailureStore({ send: () => undefined }, WINDOW_MS);
  for (let i = 0; i < MAX_FAILING_ADDRESSES + 100; i++) copy.add(`w${i}`, now);
  assert.equal(copy.size, MAX_FAILING_ADDRESSES);
  assert.ok(!copy.has('w0') && copy.has(`w${MAX_FAILING_ADDRESSES + 99}`));

  const host = new CounterHost(WINDOW_MS);
  for (let i = 0; i < MAX_FAILING_ADDRESSES + 100; i++) host.handle(1, { t: 'authfail', ip: `s${i}`, at: now } as never, () => undefined, () => undefined);
  const table = host.failureTable();
  assert.equal(table.length, MAX_FAILING_ADDRESSES);
  assert.equal(table[0]![0], 's100');
  assert.deepEqual(host.failures(`s${MAX_FAILING_ADDRESSES + 99}`), [now]);
});
