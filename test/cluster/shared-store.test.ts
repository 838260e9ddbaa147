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
  assert.equal(host.handle({ t: 'store', q: 1, ops: [['drop', 'k', 1, 1]] } as { t: string }, (r) => replies.push(r)), true);
  assert.equal(host.handle({ t: 'store', q: 2, ops: 'rate' } as { t: string }, (r) => replies.push(r)), true);
  assert.deepEqual(replies, [{ t: 'store-r', q: 1, r: [[0, 'unknown operation drop']] }, { t: 'store-r', q: 2, error: 'invalid message' }]);
  const refused = new ForwardingCounterStore({ send: () => undefined }, 1000, new MemoryAuthFailureStore());
  const call = refused.get('k');
  await new Promise((r) => setImmediate(r)); // sent at the end of the turn
  refused.handle({ t: 'store-r', q: 1, error: 'invalid message' } as { t: string });
  await assert.rejects(call, StoreUnavailable);
  // An answer that is not one result per call fails every call of the message (closed), not some.
  const short = new ForwardingCounterStore({ send: () => undefined }, 1000, new MemoryAuthFailureStore());
  const calls = [short.rate('a', 5, 60), short.rate('b', 5, 60)];
  await new Promise((r) => setImmediate(r));
  short.handle({ t: 'store-r', q: 1, r: [[1, { allowed: true, count: 1, resetSeconds: 60 }]] } as { t: string });
  for (const c of calls) await assert.rejects(c, StoreUnavailable);
});

/** A store whose messages are recorded, and answered by the host when `flush()` is called. */
function recorded(timeoutMs = 1000): { store: ForwardingCounterStore; sent: Array<{ q: number; ops: unknown[] }>; flush: () => void } {
  const host = new StoreHost();
  const sent: Array<{ q: number; ops: unknown[] }> = [];
  const store: ForwardingCounterStore = new ForwardingCounterStore({ send: (m) => sent.push(m as { q: number; ops: unknown[] }) }, timeoutMs, new MemoryAuthFailureStore());
  const flush = (): void => {
    for (const m of sent.splice(0)) host.handle(m as { t?: string }, (reply) => store.handle(reply as { t?: string }));
  };
  return { store, sent, flush };
}

test('the calls of one turn go as one message, run in their order; a refused call fails alone', async () => {
  const { store, sent, flush } = recorded();
  const results = [
    store.rate('k', 2, 60),
    store.add('c', 3, 60),
    store.rate('k', 2, 60),
    store.rate('', Number.NaN, 60), // refused by the host (not a finite number): that call alone
    store.rate('k', 2, 60), // over the limit: counted in order after the first two
    store.get('c'),
  ];
  await new Promise((r) => setImmediate(r));
  assert.equal(sent.length, 1, 'one message for the turn');
  assert.equal(sent[0]!.ops.length, 6);
  flush();
  assert.deepEqual(await results[0], { allowed: true, count: 1, resetSeconds: 60 });
  assert.equal(await results[1], 3);
  assert.deepEqual(await results[2], { allowed: true, count: 2, resetSeconds: 60 });
  await assert.rejects(results[3]!, (e: Error) => e instanceof StoreUnavailable && /invalid call/.test(e.message));
  assert.equal(((await results[4]!) as { allowed: boolean }).allowed, false);
  assert.equal(await results[5], 3);
  // The next turn's calls are a message of their own.
  const later = store.get('c');
  await new Promise((r) => setImmediate(r));
  assert.equal(sent.length, 1);
  assert.equal(sent[0]!.ops.length, 1);
  flush();
  assert.equal(await later, 3);
});

test('a turn with more calls than a message carries goes as several, each answered', async () => {
  const { store, sent, flush } = recorded();
  const calls = Array.from({ length: 250 }, () => store.rate('many', 1000, 60));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(sent.map((m) => m.ops.length), [100, 100, 50]);
  flush();
  const counts = (await Promise.all(calls)).map((r) => r.count);
  assert.deepEqual(counts, Array.from({ length: 250 }, (_, i) => i + 1));
});

test('a message without an answer fails each of its calls after the time limit; a late answer is dropped', async () => {
  const { store, sent, flush } = recorded(50);
  const calls = [store.rate('t', 5, 60), store.get('t')];
  for (const c of calls) await assert.rejects(c, (e: Error) => e instanceof StoreUnavailable && /within 50 ms/.test(e.message));
  assert.equal(sent.length, 1);
  flush(); // the late answer: nothing to settle, nothing thrown
  // The store still works for the next turn (the late message did count on the supervisor: it errs on refusing).
  const next = store.get('t');
  await new Promise((r) => setImmediate(r));
  flush();
  assert.equal(await next, 1);
});

test('calls waiting when the store closes fail closed; a channel that closed before the turn ended fails the turn', async () => {
  const { store } = recorded(30_000);
  const waiting = store.rate('x', 5, 60);
  await new Promise((r) => setImmediate(r));
  await store.close();
  await assert.rejects(waiting, (e: Error) => e instanceof StoreUnavailable && /closed/.test(e.message));
  const channel = { connected: true, send: () => undefined };
  const gone = new ForwardingCounterStore(channel, 30_000, new MemoryAuthFailureStore());
  const call = gone.rate('x', 5, 60);
  channel.connected = false; // the supervisor went away within the turn
  await assert.rejects(call, (e: Error) => e instanceof StoreUnavailable && /supervisor is gone/.test(e.message));
});
