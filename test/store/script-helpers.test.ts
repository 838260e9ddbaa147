/**
 * rate() and counter() inside the sandbox: answers from the store, arguments checked, and a store that
 * fails makes the call fail (closed) unless the script catches it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, ScriptFailure } from '../../engine/sandbox/index.ts';
import { MemoryCounterStore, StoreUnavailable, type CounterStore } from '../../engine/store/index.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';

async function sandboxWith(store: CounterStore | undefined, source: string, fastPathMs = 5): Promise<Sandbox> {
  return Sandbox.create({ host: { ...recordingHost(), store }, fastPathMs, timeoutMs: 2000, scripts: [js('helo', source)] });
}

const RATE_SCRIPT = `export default async (ctx) => {
  const r = await rate('helo:' + ctx.who, 2, 60);
  return r.allowed ? accept({ text: 'ok ' + r.count + ' ' + r.resetSeconds }) : defer('slow down ' + r.count + ' ' + r.resetSeconds);
}`;

for (const fastPathMs of [5, 0]) {
  test(`rate() counts allowed calls per key and refuses past the limit (fastPathMs ${fastPathMs})`, async () => {
    const store = new MemoryCounterStore();
    const sandbox = await sandboxWith(store, RATE_SCRIPT, fastPathMs);
    try {
      const texts = [];
      for (let i = 0; i < 4; i++) texts.push(((await sandbox.invoke('helo', { who: 'a' }, 'c')) as { text: string }).text);
      assert.deepEqual(texts, ['ok 1 60', 'ok 2 60', 'slow down 2 60', 'slow down 2 60']);
      assert.deepEqual(await sandbox.invoke('helo', { who: 'b' }, 'c'), { verdict: 'accept', text: 'ok 1 60' });
      // Scripts' keys live in their own namespace of the store.
      assert.equal((await store.rate('script:rate:helo:a', 100, 60)).count, 3);
    } finally {
      await sandbox.dispose();
    }
  });
}

test('counter() adds and reads; a new counter expires after its ttl', async () => {
  let now = 0;
  const store = new MemoryCounterStore(() => now);
  const sandbox = await sandboxWith(store, `export default async (ctx) => {
    const c = counter('sent:' + ctx.who);
    if (ctx.add) await c.add(ctx.add, 10);
    return accept({ text: String(await c.get()) });
  }`);
  try {
    const value = async (ctx: object) => ((await sandbox.invoke('helo', ctx, 'c')) as { text: string }).text;
    assert.equal(await value({ who: 'a' }), '0');
    assert.equal(await value({ who: 'a', add: 5 }), '5');
    now = 9000;
    assert.equal(await value({ who: 'a', add: -2 }), '3'); // the ttl runs from the first add, not the last
    now = 10_000;
    assert.equal(await value({ who: 'a' }), '0');
  } finally {
    await sandbox.dispose();
  }
});

test('bad arguments are the script\'s TypeError, naming the helper', async () => {
  const sandbox = await sandboxWith(new MemoryCounterStore(), `export default async (ctx) => {
    try { ${'await'} (ctx.call === 'rate' ? rate(...ctx.args) : counter(ctx.args[0]).add(ctx.args[1], ctx.args[2])); return accept(); }
    catch (e) { return reject(e.name + ': ' + e.message); }
  }`);
  try {
    const text = async (call: string, args: unknown[]) => ((await sandbox.invoke('helo', { call, args }, 'c')) as { text?: string }).text;
    assert.match(await text('rate', ['', 1, 1]) ?? '', /^TypeError: rate\(\): key must be a string/);
    assert.match(await text('rate', ['k', 0, 1]) ?? '', /^TypeError: rate\(\): limit must be a whole number/);
    assert.match(await text('rate', ['k', 1, 1.5]) ?? '', /^TypeError: rate\(\): windowSeconds must be a whole number/);
    assert.match(await text('counter', ['k', 1, 0]) ?? '', /^TypeError: counter\(\)\.add\(\): ttlSeconds must be a whole number/);
    assert.match(await text('counter', [7, 1, 1]) ?? '', /^TypeError: counter\(\): key must be a string/);
    assert.equal(await text('rate', ['k', 1, 1]), undefined);
  } finally {
    await sandbox.dispose();
  }
});

/** A store whose every operation fails, as Redis does when it is unreachable. */
const brokenStore: CounterStore = {
  kind: 'broken',
  rate: () => Promise.reject(new StoreUnavailable('store unavailable (redis): connection refused')),
  get: () => Promise.reject(new StoreUnavailable('store unavailable (redis): connection refused')),
  add: () => Promise.reject(new StoreUnavailable('store unavailable (redis): connection refused')),
  authFailures: () => { throw new Error('unused'); },
  close: () => Promise.resolve(),
};

test('a store failure fails the call (closed) unless the script catches it', async () => {
  const uncaught = await sandboxWith(brokenStore, RATE_SCRIPT);
  try {
    const failure = await uncaught.invoke('helo', { who: 'a' }, 'c').then(() => null, (e: unknown) => e);
    assert.ok(failure instanceof ScriptFailure && failure.kind === 'error', String(failure));
    assert.match(failure.message, /store unavailable \(redis\): connection refused/);
  } finally {
    await uncaught.dispose();
  }
  const caught = await sandboxWith(brokenStore, `export default async () => {
    try { await rate('k', 1, 60); return accept(); } catch (e) { return defer('no store: ' + e.message); }
  }`);
  try {
    assert.deepEqual(await caught.invoke('helo', {}, 'c'), { verdict: 'defer', text: 'no store: store unavailable (redis): connection refused' });
  } finally {
    await caught.dispose();
  }
});

test('a bad argument to rate() rejects its promise, as an async helper\'s throw does: nothing is thrown at the call', async () => {
  const sandbox = await sandboxWith(new MemoryCounterStore(), `export default async () => {
    let p;
    try { p = rate('', 1, 60); } catch (e) { return reject('thrown at the call: ' + e.message); }
    try { await p; return accept(); } catch (e) { return defer(e.name + ': ' + e.message); }
  }`);
  try {
    const verdict = await sandbox.invoke('helo', {}, 'c') as { verdict: string; text: string };
    assert.equal(verdict.verdict, 'defer', verdict.text);
    assert.match(verdict.text, /^TypeError: rate\(\): key must be a string/);
  } finally {
    await sandbox.dispose();
  }
});

/** A store that answers at once (as the memory store does) but fails: the answer comes within the entry, or an error. */
function failingAtOnce(): CounterStore & { calls: number } {
  const memory = new MemoryCounterStore();
  const store = {
    kind: 'memory', calls: 0,
    immediate: {
      rateNow: (): never => { store.calls++; throw new StoreUnavailable('store unavailable (memory): broken on purpose'); },
      getNow: () => 0, addNow: () => 0,
    },
    rate: (k: string, l: number, w: number) => memory.rate(k, l, w), get: (k: string) => memory.get(k),
    add: (k: string, n: number, t: number) => memory.add(k, n, t), authFailures: () => memory.authFailures(), close: () => memory.close(),
  };
  return store;
}

for (const fastPathMs of [5, 0]) {
  test(`a store that answers at once and fails fails the call closed unless the script catches it (fastPathMs ${fastPathMs})`, async () => {
    const store = failingAtOnce();
    const uncaught = await sandboxWith(store, RATE_SCRIPT, fastPathMs);
    try {
      const failure = await uncaught.invoke('helo', { who: 'a' }, 'c').then(() => null, (e: unknown) => e);
      assert.ok(failure instanceof ScriptFailure && failure.kind === 'error', String(failure));
      assert.match(failure.message, /broken on purpose/);
    } finally {
      await uncaught.dispose();
    }
    const caught = await sandboxWith(store, `export default async () => {
      try { await rate('k', 1, 60); return accept(); } catch (e) { return defer('no store: ' + e.message); }
    }`, fastPathMs);
    try {
      assert.deepEqual(await caught.invoke('helo', {}, 'c'), { verdict: 'defer', text: 'no store: store unavailable (memory): broken on purpose' });
      // Each call asked it; a fast-path attempt stopped at its budget (a loaded machine) runs again and asks again:
      // an operation that failed at once started nothing, so nothing is replayed (the journal keeps answers only).
      assert.ok(store.calls >= 2, `each call asked the store: ${store.calls}`);
    } finally {
      await caught.dispose();
    }
  });
}

test('without a store (postern check), rate() rejects', async () => {
  const sandbox = await sandboxWith(undefined, RATE_SCRIPT);
  try {
    await assert.rejects(sandbox.invoke('helo', { who: 'a' }, 'c'), /rate\(\): no counter store here/);
  } finally {
    await sandbox.dispose();
  }
});

test('an async hook whose store answers at once (memory) stays on the fast path and keeps batching', async () => {
  const host = recordingHost();
  const sandbox = await Sandbox.create({
    host: { ...host, store: new MemoryCounterStore() }, fastPathMs: 1000, timeoutMs: 2000,
    scripts: [js('helo', `export default async (ctx) => { log('n', ctx.n); const r = await rate('k', 3, 60); log('count', r.count); return accept({ text: String(r.count) }); }`)],
  });
  try {
    const texts = async (ns: number[]) => (await Promise.all(ns.map((n) => sandbox.invoke('helo', { n }, `c${n}`)))).map((v) => (v as { text: string }).text);
    assert.deepEqual(await texts([1, 2]), ['1', '2']);
    assert.deepEqual(await texts([3, 4]), ['3', '3']);
    assert.deepEqual((await sandbox.stats()).fastPath, { calls: 4, overruns: 0, descheduled: 0, batches: 2 }, 'two batches, no call alone');
    // A line logged after the await belongs to its call too when it is the only one of its batch.
    await sandbox.invoke('helo', { n: 5 }, 'c5');
    assert.deepEqual(host.logs.filter((l) => l.connectionId === 'c5').map((l) => l.message), ['n 5', 'count 3']);
  } finally {
    await sandbox.dispose();
  }
});
