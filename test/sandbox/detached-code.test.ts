/**
 * Code a call leaves running after it returned (a promise it did not wait for) must not outlive the call:
 * with a store that answers later (Redis), a detached `for (;;) await counter().add()` ran on after its
 * verdict for as long as answers came — a store round trip and an entry into the isolate each, outside any
 * call's deadline and past the cap of host operations per call. Its answers are no longer delivered once its
 * call has ended; what it started before still happens (a fire-and-forget add() counts). (Code that has lost
 * its call's name — 64 turns of other promises inside a delivery — is not covered: see IsolateSlot #waits.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryCounterStore, STORE_KEYS, type CounterStore } from '../../engine/store/index.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

/** A store that answers on a later turn, as Redis does; `ops` counts what it was asked. */
function laterStore() {
  const memory = new MemoryCounterStore();
  const counted = { ops: 0 };
  const later = <T>(value: () => T): Promise<T> => {
    counted.ops++;
    return new Promise((resolve) => setImmediate(() => resolve(value())));
  };
  const store: CounterStore = {
    kind: 'later',
    rate: (k, l, w) => later(() => memory.rateNow(k, l, w)),
    get: (k) => later(() => memory.getNow(k)),
    add: (k, n, t) => later(() => memory.addNow(k, n, t)),
    authFailures: () => memory.authFailures(),
    close: () => Promise.resolve(),
  };
  return { store, counted, counter: (key: string) => memory.getNow(STORE_KEYS.scriptCounter(key)) };
}

const SCRIPT = `
const spin = async (key) => { for (;;) await counter(key).add(1, 60); };
export default async (ctx) => {
  switch (ctx.mode) {
    case 'detached': counter('once').add(1, 60); spin('loop'); return accept({ text: 'detached' });
    case 'deferred': Promise.resolve().then(() => spin('loop')); return accept({ text: 'deferred' });
    default: {
      const r = await rate('r' + ctx.n, 100, 60);
      return accept({ text: 'n' + ctx.n + ' ' + r.count });
    }
  }
};`;

for (const mode of ['detached', 'deferred'] as const) {
  test(`a loop of host operations left running after the verdict (${mode}) stops at its first await once the call ended`, async () => {
    const s = laterStore();
    await withSandbox({ host: { ...recordingHost(), store: s.store }, isolates: 1, timeoutMs: 5000, scripts: [js('mailfrom', SCRIPT)] }, async (sandbox) => {
      // 'deferred' starts its loop among the continuations of a batch of two calls (one entry on the fast path).
      const [verdict] = await Promise.all([sandbox.invoke('mailfrom', { mode, n: 0 }, 'evil'), sandbox.invoke('mailfrom', { n: 1 }, 'c1')]);
      assert.deepEqual(verdict, { verdict: 'accept', text: mode });
      // Ordinary calls, one after another, each waiting for the store: time for the loop to have run on.
      for (let n = 2; n < 22; n++) assert.deepEqual(await sandbox.invoke('mailfrom', { n }, `c${n}`), { verdict: 'accept', text: `n${n} 1` });
      // Its answer is not delivered once its call is over: it never goes round again. Started among a batch's
      // continuations, it may go round while another call of that batch (c1) still waits, and no longer.
      const loops = s.counter('loop');
      if (mode === 'deferred') assert.ok(loops >= 1 && loops <= 2, String(loops));
      else assert.equal(loops, 1);
      if (mode === 'detached') assert.equal(s.counter('once'), 1, 'a fire-and-forget add() still counts');
      const expected = 21 + loops + (mode === 'detached' ? 1 : 0);
      assert.equal(s.counted.ops, expected, 'the store was asked nothing more');
      assert.equal((await sandbox.stats()).rebuilds, 0);
    });
  });
}

test('a loop of host operations a top level leaves running (a background poller) stops at its first await', async () => {
  const s = laterStore();
  const script = `
    (async () => { for (;;) await counter('poll').add(1, 60); })(); // without timers, it would spin on the store
    export default async (ctx) => { const r = await rate('r' + ctx.n, 100, 60); return accept({ text: '1 ' + r.count }); };`;
  await withSandbox({ host: { ...recordingHost(), store: s.store }, isolates: 1, timeoutMs: 5000, scripts: [js('mailfrom', script)] }, async (sandbox) => {
    for (let n = 0; n < 20; n++) assert.deepEqual(await sandbox.invoke('mailfrom', { n }, `c${n}`), { verdict: 'accept', text: '1 1' });
    assert.equal(s.counter('poll'), 1, 'the poller never went round again');
    assert.equal(s.counted.ops, 21);
  });
});

test('a top level that awaits a store answering later fails its load with a clear error naming the file', async () => {
  const s = laterStore();
  await assert.rejects(withSandbox({ host: { ...recordingHost(), store: s.store }, isolates: 1, scripts: [js('helo', 'const n = await counter("x").get();\nexport default () => accept({ text: String(n) });')] }, async () => {}),
    (e: unknown) => {
      assert.match(String(e), /helo\.js:1:1: top level has not finished: it still waits for a promise/);
      return true;
    });
});
