// The worker side of the shared memory store against the supervisor's side, over a channel in this
// process: answers as the memory store would; no answer in time, a closed channel or a refused call all
// fail with StoreUnavailable (callers refuse temporarily: fail closed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ForwardingCounterStore, StoreHost } from '../../engine/cluster/shared-store.ts';
import { MemoryAuthFailureStore } from '../../engine/auth/failure-limiter.ts';
import { StoreUnavailable } from '../../engine/store/counter-store.ts';

function pair(timeoutMs = 1000): ForwardingCounterStore[] {
  const host = new StoreHost();
  const stores: ForwardingCounterStore[] = [];
  for (let i = 0; i < 2; i++) {
    const store: ForwardingCounterStore = new ForwardingCounterStore({
      send: (m) => setImmediate(() => host.handle(m as { t?: string }, (reply) => setImmediate(() => store.handle(reply as { t?: string })))),
    }, timeoutMs, new MemoryAuthFailureStore());
    stores.push(store);
  }
  return stores;
}

test('two workers count in the one store', async () => {
  const [a, b] = pair() as [ForwardingCounterStore, ForwardingCounterStore];
  assert.deepEqual(await a.rate('k', 2, 60), { allowed: true, count: 1, resetSeconds: 60 });
  assert.deepEqual(await b.rate('k', 2, 60), { allowed: true, count: 2, resetSeconds: 60 });
  assert.equal((await a.rate('k', 2, 60)).allowed, false);
  assert.equal(await a.add('c', 5, 60), 5);
  assert.equal(await b.add('c', -2, 60), 3);
  assert.equal(await b.get('c'), 3);
});

test('no answer in time, a closed channel or a refused call: StoreUnavailable', async () => {
  const silent = new ForwardingCounterStore({ send: () => undefined }, 50, new MemoryAuthFailureStore());
  await assert.rejects(silent.rate('k', 1, 60), StoreUnavailable);
  const closed = new ForwardingCounterStore({ send: () => undefined, connected: false }, 50, new MemoryAuthFailureStore());
  await assert.rejects(closed.get('k'), StoreUnavailable);
  const throwing = new ForwardingCounterStore({ send: () => { throw new Error('channel closed'); } }, 50, new MemoryAuthFailureStore());
  await assert.rejects(throwing.add('k', 1, 60), StoreUnavailable);
  const host = new StoreHost();
  const replies: object[] = [];
  assert.equal(host.handle({ t: 'store', q: 1, op: 'drop', key: 'k', a: 1, b: 1 } as { t: string }, (r) => replies.push(r)), true);
  assert.deepEqual(replies, [{ t: 'store-r', q: 1, error: 'unknown operation drop' }]);
  const refused = new ForwardingCounterStore({ send: () => undefined }, 1000, new MemoryAuthFailureStore());
  const call = refused.get('k');
  refused.handle({ t: 'store-r', q: 1, error: 'invalid call' } as { t: string });
  await assert.rejects(call, StoreUnavailable);
});
