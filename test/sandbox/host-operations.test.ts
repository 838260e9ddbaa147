/**
 * Hooks awaiting a host operation that answers later (a store such as Redis): the isolate is free while
 * they wait, answers are delivered when they come, and every guarantee of a call holds after its `await`
 * — its own outcome, its log lines under its connection, fail closed on a store error, and a continuation
 * that never ends fails alone, on an isolate thread, without holding the event loop.
 *
 * The store here answers only when the test releases its answers (no timers): each operation waits in
 * `held` until then.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ScriptFailure } from '../../engine/sandbox/index.ts';
import { heldStore } from './helpers/held-store.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';
import { MemoryCounterStore } from '../../engine/store/index.ts';

const failure = (kind: string) => (e: unknown): boolean => e instanceof ScriptFailure && e.kind === kind;

const RATE_SCRIPT = `export default async (ctx) => {
  log('before', ctx.n);
  const r = await rate('k' + ctx.n, 10, 60);
  log('after', ctx.n, r.count);
  return accept({ text: 'n' + ctx.n + ' ' + r.count });
}`;

// More than one batch (32 calls): were the isolate held while a batch's calls wait, the later ones could not start.
const MANY = 40;

test('many hooks awaiting a slow store on one isolate all start, wait together and complete', async () => {
  const held = heldStore();
  const host = { ...recordingHost(), store: held.store };
  // timeoutMs is a hang guard here: the calls wait for the held store, not for time (5 s ran out at load average 20).
  // fastPathMs: a budget no loaded machine uses up. A batch stopped at the default budget runs its first call again
  // on an isolate thread, which holds the one isolate while it awaits its answer: the calls behind it could not
  // start, and the test, waiting for all of them to start before it answers, waited for ever (1 run in 8 at load 27).
  await withSandbox({ host, isolates: 1, timeoutMs: 30_000, fastPathMs: 1000, scripts: [js('mailfrom', RATE_SCRIPT)] }, async (sandbox) => {
    const calls = Array.from({ length: MANY }, (_, n) => sandbox.invoke('mailfrom', { n }, `c${n}`));
    await held.until(MANY); // every call is waiting for the store at once: none holds the isolate
    held.answerAll();
    const results = await Promise.all(calls);
    assert.deepEqual(results, Array.from({ length: MANY }, (_, n) => ({ verdict: 'accept', text: `n${n} 1` })));
    // The isolate serves calls again (it was never held), and its hook keeps batching.
    const again = sandbox.invoke('mailfrom', { n: 1 }, 'c1');
    await held.until(1);
    held.answerAll();
    assert.deepEqual(await again, { verdict: 'accept', text: 'n1 2' });
    const stats = await sandbox.stats();
    assert.equal(stats.failures.error + stats.failures.timeout + stats.failures.memory, 0);
    assert.equal(stats.rebuilds, 0);
  });
});

test('log lines after an await name the call\'s own connection, when many answers are delivered together', async () => {
  const held = heldStore();
  const host = { ...recordingHost(), store: held.store };
  // fastPathMs: as above (a stopped batch's re-run would hold the isolate before all 8 had started).
  await withSandbox({ host, isolates: 1, timeoutMs: 5000, fastPathMs: 1000, scripts: [js('mailfrom', RATE_SCRIPT)] }, async (sandbox) => {
    const calls = Array.from({ length: 8 }, (_, n) => sandbox.invoke('mailfrom', { n }, `c${n}`));
    await held.until(8);
    held.answerAll();
    await Promise.all(calls);
    const after = host.logs.filter((l) => l.message.startsWith('after'));
    assert.equal(after.length, 8);
    for (const line of host.logs) {
      const n = /^(?:before|after) (\d+)/.exec(line.message)?.[1];
      assert.equal(line.connectionId, `c${n}`, `"${line.message}" is told under its own connection`);
      assert.equal(line.file, '/srv/postern/scripts/mailfrom.js');
    }
  });
});

test('a continuation that never ends after await fails alone as a timeout; other calls are served meanwhile', async () => {
  const held = heldStore();
  const host = { ...recordingHost(), store: held.store };
  await withSandbox({
    // Long enough that the other calls are served while the loop still runs, even on a loaded machine: its deadline
    // counts from its start, and with 300 ms a test descheduled a moment before the five calls saw the loop over
    // (as in failures.test.ts's endless loop beside a normal call).
    host, isolates: 2, timeoutMs: 3000,
    scripts: [
      js('mailfrom', 'export default async (ctx) => { await rate("k", 10, 60); if (ctx.loop) while (true) {} return accept({ text: "m" + ctx.n }); }'),
      js('helo', 'export default (ctx) => accept({ text: "h" + ctx.n })'),
    ],
  }, async (sandbox) => {
    let loopSettled = false;
    const loop = sandbox.invoke('mailfrom', { loop: true, n: 0 }, 'looper').finally(() => { loopSettled = true; });
    const waiting = sandbox.invoke('mailfrom', { n: 1 }, 'waiting'); // waits for the store on the same isolate
    await held.until(2);
    held.answerAll(); // the looper's continuation now runs, on an isolate thread
    await new Promise((resolve) => setImmediate(resolve));
    for (let n = 0; n < 5; n++) assert.deepEqual(await sandbox.invoke('helo', { n }, `other${n}`), { verdict: 'accept', text: `h${n}` });
    assert.equal(loopSettled, false, 'the loop is still running while other calls are served');
    await assert.rejects(loop, failure('timeout'));
    // The call answered in the same delivery either ended before the loop began or fails with its isolate; never hangs.
    const other = await waiting.then((v) => v, (e: unknown) => e);
    assert.ok(other instanceof ScriptFailure || (other as { text?: string }).text === 'm1', String(other));
    // The pool recovers: the looping isolate is replaced, and store-awaiting calls work again.
    const after = sandbox.invoke('mailfrom', { n: 2 }, 'after');
    await held.until(1);
    held.answerAll();
    assert.deepEqual(await after, { verdict: 'accept', text: 'm2' });
  });
});

test('a store operation that fails rejects the script\'s promise: the call fails closed unless the script catches it', async () => {
  const held = heldStore();
  const host = { ...recordingHost(), store: held.store };
  await withSandbox({
    host, isolates: 1, timeoutMs: 5000,
    scripts: [js('rcptto', `export default async (ctx) => {
      if (!ctx.catch) { await rate('k', 10, 60); return accept(); }
      try { await rate('k', 10, 60); return accept(); } catch (e) { return defer('store: ' + e.message); }
    }`)],
  }, async (sandbox) => {
    const uncaught = sandbox.invoke('rcptto', { catch: false }, 'c1');
    const caught = sandbox.invoke('rcptto', { catch: true }, 'c2');
    await held.until(2);
    held.failAll(new Error('redis is down'));
    await assert.rejects(uncaught, (e: unknown) => failure('error')(e) && /redis is down/.test((e as Error).message));
    assert.deepEqual(await caught, { verdict: 'defer', text: 'store: redis is down' });
  });
});

test('a call whose store never answers fails at its deadline, and the isolate keeps serving others', async () => {
  const held = heldStore();
  const host = { ...recordingHost(), store: held.store };
  await withSandbox({
    host, isolates: 1, timeoutMs: 200,
    scripts: [
      js('mailfrom', 'export default async (ctx) => { await rate("k", 10, 60); return accept(); }'),
      js('helo', 'export default () => accept()'),
    ],
  }, async (sandbox) => {
    const stuck = sandbox.invoke('mailfrom', {}, 'c1');
    await held.until(1);
    assert.deepEqual(await sandbox.invoke('helo', {}, 'c2'), { verdict: 'accept' });
    await assert.rejects(stuck, (e: unknown) => failure('timeout')(e) && /never settled/.test((e as Error).message));
    held.answerAll(); // too late: the answer is dropped
    assert.deepEqual(await sandbox.invoke('helo', {}, 'c3'), { verdict: 'accept' });
    assert.equal((await sandbox.stats()).rebuilds, 0);
  });
});

test('the continuations of a batch\'s calls each have a call\'s allowances, not one call\'s between them', async () => {
  // With a store that answers at once, what a call does after its first `await` runs at the end of its batch's
  // entry, under the batch's tag: one client's continuation could use up that shared allowance and make the
  // next client's rate() or lookup() throw (451 to a client whose own call stayed within every bound).
  const memory = new MemoryCounterStore();
  await withSandbox({ host: { ...recordingHost(), store: memory }, isolates: 1, timeoutMs: 30_000, fastPathMs: 1000,
    scripts: [js('rcptto', `export default async (ctx) => {
      await rate('first' + ctx.n, 100, 60);
      for (let i = 0; i < 60; i++) await rate('k' + ctx.n + ':' + i, 100, 60);
      for (let i = 0; i < 20; i++) lookup('users', ctx.n + ':' + i);
      return accept({ text: 'ok ' + ctx.n });
    }`)] }, async (sandbox) => {
    const calls = Array.from({ length: 32 }, (_, n) => sandbox.invoke('rcptto', { n }, `c${n}`));
    assert.deepEqual(await Promise.all(calls), Array.from({ length: 32 }, (_, n) => ({ verdict: 'accept', text: `ok ${n}` })));
    assert.equal((await sandbox.stats()).fastPath.batches, 1, 'one entry: the continuations ran together');
  });
});

test('a lone call\'s code left running after its verdict logs under its own connection', async () => {
  const host = { ...recordingHost(), store: new MemoryCounterStore() };
  await withSandbox({ host, isolates: 1, scripts: [js('rcptto', `export default (ctx) => {
    counter('c').add(1, 60).then((n) => log('counted', ctx.n, n)); // not awaited: runs after the verdict
    return accept();
  }`)] }, async (sandbox) => {
    for (let n = 0; n < 3; n++) await sandbox.invoke('rcptto', { n }, `c${n}`);
    assert.deepEqual(host.logs.map((l) => [l.connectionId, l.file, l.message]),
      [0, 1, 2].map((n) => [`c${n}`, '/srv/postern/scripts/rcptto.js', `counted ${n} ${n + 1}`]));
  });
});

test('in a batch, the callbacks of a call that returned its verdict do not log under another client\'s connection', async () => {
  const host = { ...recordingHost(), store: new MemoryCounterStore() };
  await withSandbox({ host, isolates: 1, scripts: [js('rcptto', `export default (ctx) => {
    if (ctx.n === 0) { counter('c').add(1, 60).then(() => log('from 0')); return accept(); } // not awaited
    return (async () => { await rate('k', 100, 60); log('from 1'); return accept(); })();
  }`)] }, async (sandbox) => {
    // Invoked in one turn: one batch, whose callbacks run mixed at the end of its entry.
    await Promise.all([sandbox.invoke('rcptto', { n: 0 }, 'c0'), sandbox.invoke('rcptto', { n: 1 }, 'c1')]);
    assert.equal(host.logs.length, 2);
    // Before: both were told under c1, the one call that returned a promise.
    for (const line of host.logs) assert.ok(line.connectionId === null || line.connectionId === `c${line.message.slice(-1)}`, `${line.message} under ${line.connectionId}`);
  });
});
