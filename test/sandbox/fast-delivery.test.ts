/**
 * Where an awaited host operation's continuation runs, counted in isolate entries (engine/sandbox/isolate-slot.ts
 * `slotEntries`), not time: a store that answers at once settles the call within its own entry; answers that
 * come later are delivered to fast-path calls on the event-loop thread, all of one turn in one entry. A delivery
 * stopped at the fast path's budget runs its calls again from the start on an isolate thread, where their
 * journals answer what they had started: each operation counts once, and a continuation that never ends fails
 * closed as a timeout there.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ScriptFailure } from '../../engine/sandbox/index.ts';
import { slotEntries } from '../../engine/sandbox/isolate-slot.ts';
import { MemoryCounterStore } from '../../engine/store/index.ts';
import { heldStore } from './helpers/held-store.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

const entriesSince = (before: typeof slotEntries) => ({
  eventLoop: slotEntries.eventLoop - before.eventLoop,
  isolateThread: slotEntries.isolateThread - before.isolateThread,
});

const RATE = `export default async (ctx) => {
  const r = await rate('k' + ctx.n, 10, 60);
  log('after', ctx.n, r.count);
  return accept({ text: ctx.n + ':' + r.count });
}`;

test('await rate() on a store that answers at once settles the calls within their own entry', async () => {
  // A budget no loaded machine uses up: this test is about where calls run, not about stops.
  await withSandbox({ host: { ...recordingHost(), store: new MemoryCounterStore() }, fastPathMs: 1000, scripts: [js('mailfrom', RATE)] }, async (sandbox) => {
    const before = { ...slotEntries };
    const replies = await Promise.all(Array.from({ length: 10 }, (_, n) => sandbox.invoke('mailfrom', { n }, `c${n}`)));
    assert.deepEqual(replies.map((r) => (r as { text: string }).text), Array.from({ length: 10 }, (_, n) => `${n}:1`));
    assert.deepEqual(entriesSince(before), { eventLoop: 1, isolateThread: 0 });
  });
});

test('answers that come later are delivered to fast-path calls on the event-loop thread, those of one turn in one entry', async () => {
  const held = heldStore();
  const host = { ...recordingHost(), store: held.store };
  await withSandbox({ host, fastPathMs: 1000, scripts: [js('mailfrom', RATE)] }, async (sandbox) => {
    const before = { ...slotEntries };
    const calls = Array.from({ length: 10 }, (_, n) => sandbox.invoke('mailfrom', { n }, `c${n}`));
    await held.until(10);
    held.answerAll();
    const replies = await Promise.all(calls);
    assert.deepEqual(replies.map((r) => (r as { text: string }).text), Array.from({ length: 10 }, (_, n) => `${n}:1`));
    assert.deepEqual(entriesSince(before), { eventLoop: 2, isolateThread: 0 }, 'one entry for the calls, one for the answers');
    // The continuations' log lines name their own calls' connections.
    for (let n = 0; n < 10; n++) assert.ok(host.logs.some((l) => l.connectionId === `c${n}` && l.message === `after ${n} 1`), `line of c${n}`);
  });
});

test('a delivery stopped at the fast path\'s budget runs its calls again on an isolate thread; each operation counts once', async () => {
  const held = heldStore();
  const host = { ...recordingHost(), store: held.store };
  // Call 0's continuation spins on its first attempt in an isolate only (counted work, far past a 1 ms budget):
  // the entry delivering both answers is stopped, and both calls run again from the start. (On a loaded machine
  // the stop may come elsewhere, or late: what holds whatever the timing is asserted.) Two isolates: a call run
  // on an isolate thread from the start holds its isolate while it waits for the answer the test holds back.
  const script = `let spun = false;
  export default async (ctx) => {
    const r = await rate('k' + ctx.n, 10, 60);
    if (ctx.n === 0 && !spun) { spun = true; let x = 0; for (let i = 0; i < 5e7; i++) x += i; }
    log('after', ctx.n, r.count);
    return accept({ text: ctx.n + ':' + r.count });
  }`;
  // timeoutMs: a hang guard, for a 5·10⁷-iteration loop (10 s ran out in such tests at load 40).
  await withSandbox({ host, fastPathMs: 1, timeoutMs: 30_000, isolates: 2, scripts: [js('mailfrom', script)] }, async (sandbox) => {
    const calls = [0, 1].map((n) => sandbox.invoke('mailfrom', { n }, `c${n}`));
    await held.until(2);
    held.answerAll();
    assert.deepEqual((await Promise.all(calls)).map((r) => (r as { text: string }).text), ['0:1', '1:1']);
    assert.equal(held.counts.started, 2, 'the re-runs took their answers from the journal');
    // The stopped attempt's lines are dropped; each call logged once, from its run that counted.
    for (const n of [0, 1]) assert.equal(host.logs.filter((l) => l.message === `after ${n} 1`).length, 1);
  });
});

test('a continuation that never ends after await is stopped on the fast path and fails closed on an isolate thread, counted once', async () => {
  const held = heldStore();
  const host = { ...recordingHost(), store: held.store };
  const script = `export default async (ctx) => {
    const r = await rate('k', 10, 60);
    if (ctx.loop) while (true) {}
    return accept({ text: String(r.count) });
  }`;
  await withSandbox({ host, fastPathMs: 1, timeoutMs: 300, isolates: 2, scripts: [js('mailfrom', script)] }, async (sandbox) => {
    const looping = sandbox.invoke('mailfrom', { loop: true }, 'looper');
    await held.until(1);
    held.answerAll();
    await assert.rejects(looping, (e: unknown) => e instanceof ScriptFailure && e.kind === 'timeout');
    assert.equal(held.counts.started, 1);
    // The pool serves store-awaiting calls again.
    const after = sandbox.invoke('mailfrom', {}, 'after');
    await held.until(1);
    held.answerAll();
    assert.deepEqual(await after, { verdict: 'accept', text: '2' });
    assert.equal(held.counts.started, 2);
  });
});

test('a script that tries to replace the array iterator does not break the delivery of answers (its own or others\')', async () => {
  const held = heldStore();
  // Builtins are frozen (the assignment throws); were they not, the runner must not depend on them either.
  const script = `try { Array.prototype[Symbol.iterator] = function () { throw new Error('patched'); }; } catch {}
  ${RATE}`;
  await withSandbox({ host: { ...recordingHost(), store: held.store }, fastPathMs: 1000, scripts: [js('mailfrom', script)] }, async (sandbox) => {
    const calls = [0, 1].map((n) => sandbox.invoke('mailfrom', { n }, `c${n}`));
    await held.until(2);
    held.answerAll();
    assert.deepEqual((await Promise.all(calls)).map((r) => (r as { text: string }).text), ['0:1', '1:1']);
  });
});

test('answers that come in an I/O or timer callback are delivered before that turn\'s check phase, so what the continuations reply leaves in that turn', async () => {
  const held = heldStore();
  await withSandbox({ host: { ...recordingHost(), store: held.store }, fastPathMs: 1000, scripts: [js('mailfrom', RATE)] }, async (sandbox) => {
    const order: string[] = [];
    const calls = [0, 1].map((n) => sandbox.invoke('mailfrom', { n }, `c${n}`).then((r) => { order.push(`settled ${n}`); return r; }));
    await held.until(2);
    // As a Redis reply comes: in a callback of the poll (here the timers) phase. The replies the continuations
    // make are written at the end of the turn (smtp/reply-batch.ts, a setImmediate): this one stands for it.
    await new Promise<void>((done) => setTimeout(() => {
      setImmediate(() => { order.push('check phase'); done(); });
      held.answerAll();
    }, 0));
    await Promise.all(calls);
    assert.deepEqual(order, ['settled 0', 'settled 1', 'check phase']);
  });
});

test('a continuation answered at once again and again is delivered at most twice per turn: the event loop goes on meanwhile', async () => {
  // The memory store answering by promise (as a remote store does, but within the same turn).
  const memory = new MemoryCounterStore();
  const store = { kind: 'memory', rate: (k: string, l: number, w: number) => memory.rate(k, l, w), get: (k: string) => memory.get(k),
    add: (k: string, n: number, t: number) => memory.add(k, n, t), authFailures: () => memory.authFailures(), close: () => memory.close() };
  const script = `export default async () => {
    let r;
    for (let i = 0; i < 200; i++) r = await rate('loop', 1000, 60);
    return accept({ text: String(r.count) });
  }`;
  await withSandbox({ host: { ...recordingHost(), store }, fastPathMs: 1000, scripts: [js('mailfrom', script)] }, async (sandbox) => {
    let turns = 0;
    let ticking = true;
    const tick = (): void => { turns++; if (ticking) setImmediate(tick); };
    setImmediate(tick);
    const before = { ...slotEntries };
    assert.deepEqual(await sandbox.invoke('mailfrom', {}, 'c'), { verdict: 'accept', text: '200' });
    ticking = false;
    const entries = entriesSince(before);
    assert.equal(entries.eventLoop, 201, 'the call, then one delivery per answer');
    assert.ok(turns >= 200 / 2 - 2, `${turns} turns of the event loop during 200 deliveries`);
  });
});
