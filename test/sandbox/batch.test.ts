/**
 * Fast-path calls made during one turn of the event loop enter the isolate together. Each call still
 * gets its own result, failure and log lines, and a slow, throwing or memory-hungry call fails alone.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ScriptFailure } from '../../engine/sandbox/index.ts';
import { connectionKey } from '../../engine/smtp/script-context.ts';
import { MemoryCounterStore } from '../../engine/store/index.ts';
import { authContext, js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

const settle = <T>(calls: Array<Promise<T>>) => Promise.allSettled(calls);

/**
 * Slow calls that do not depend on the machine's speed (a call that merely took 60 ms of wall time could end
 * before a descheduled timer thread stopped it): they log 'alone', then spin until the host opens a gate,
 * so every fast-path attempt uses up its budget. The host opens it when it hears 'alone': the log lines of a
 * fast-path attempt are held until its batch ends (and dropped when it is stopped), so it hears it only from
 * the attempt run alone on an isolate thread, which then goes on at once. An isolate remembers lookups:
 * each asks anew, every few milliseconds (a call may make 500 lookups the isolate does not remember).
 */
function gatedHost(): ReturnType<typeof recordingHost> {
  let open = false;
  const host = recordingHost();
  const log = host.log;
  return Object.assign(host, {
    lookup: (table: string): string | null => (table === 'gate' && open ? 'open' : null),
    log(...args: Parameters<typeof log>): void {
      if (args[3] === 'alone') open = true;
      log(...args);
    },
  });
}
const UNTIL_THE_GATE_OPENS = `for (;;) {
  const t = Date.now();
  while (Date.now() - t < 5) {}
  if (lookup('gate', String(Math.random())) === 'open') break;
}`;

test('calls made in one turn share one entry into the isolate, each with its own outcome and log lines', async () => {
  const host = recordingHost();
  await withSandbox({
    host,
    fastPathMs: 1000, // this test is about sharing, not the bound: no loaded machine may stop the batch
    timeoutMs: 2000,
    scripts: [js('helo', `export default (ctx) => {
      log('helo', ctx.n);
      if (ctx.n === 4) throw new Error('four');
      return ctx.n % 3 === 2 ? reject('no ' + ctx.n) : accept({ text: 'ok ' + ctx.n });
    }`)],
  }, async (sandbox) => {
    const results = await settle([0, 1, 2, 3, 4, 5].map((n) => sandbox.invoke('helo', { n }, `c${n}`)));
    assert.deepEqual(results.slice(0, 4).map((r) => r.status === 'fulfilled' && r.value), [
      { verdict: 'accept', text: 'ok 0' }, { verdict: 'accept', text: 'ok 1' }, { verdict: 'reject', text: 'no 2' }, { verdict: 'accept', text: 'ok 3' },
    ]);
    const thrown = results[4]!.status === 'rejected' ? results[4]!.reason : null;
    assert.ok(thrown instanceof ScriptFailure && thrown.kind === 'error' && /four/.test(thrown.message) && thrown.line === 3, String(thrown));
    assert.deepEqual(results[5]!.status === 'fulfilled' && results[5]!.value, { verdict: 'reject', text: 'no 5' });
    assert.deepEqual(host.logs.map((l) => [l.connectionId, l.message]), [0, 1, 2, 3, 4, 5].map((n) => [`c${n}`, `helo ${n}`]));
    const { fastPath, failures } = await sandbox.stats();
    assert.deepEqual(fastPath, { calls: 6, overruns: 0, descheduled: 0, batches: 1 });
    assert.equal(failures.error, 1);
    // Calls made after the batch has run make the next one.
    assert.deepEqual(await sandbox.invoke('helo', { n: 6 }, 'c6'), { verdict: 'accept', text: 'ok 6' });
    assert.equal((await sandbox.stats()).fastPath.batches, 2);
  });
});

test('a slow call is stopped with its batch; the calls after it do not wait for it, and each logs once', async () => {
  // Run alone, the slow call waits for the store's answer, which the test gives once the others have
  // settled: had they waited for it, nothing would end. (Waiting on its thread instead, asking the host
  // over and over, would keep the event loop busy and slow the others' batches down.)
  const memory = new MemoryCounterStore();
  let answer!: () => void;
  const answered = new Promise<void>((resolve) => { answer = resolve; });
  const host = Object.assign(gatedHost(), { store: {
    kind: 'test', rate: async (k: string, l: number, w: number) => { await answered; return memory.rateNow(k, l, w); },
    get: () => Promise.resolve(0), add: () => Promise.resolve(0), authFailures: () => memory.authFailures(), close: () => Promise.resolve(),
  } });
  await withSandbox({
    host,
    isolates: 2, // run alone, the slow call holds one on its thread until its promise settles
    fastPathMs: 20,
    timeoutMs: 60_000, // a hang guard: run alone, the slow call waits for the test
    scripts: [js('rcptto', `export default (ctx) => {
      log('run', ctx.n);
      if (!ctx.slow) return accept({ text: String(ctx.n) });
      log('alone');
      ${UNTIL_THE_GATE_OPENS}
      return rate('slow', 1000000, 60).then(() => accept({ text: String(ctx.n) }));
    }`)],
  }, async (sandbox) => {
    // An isolate's first call compiles, and may use up the budget once (see FastPathPolicy): warm one up.
    assert.deepEqual(await sandbox.invoke('rcptto', { n: 9 }, 'c9'), { verdict: 'accept', text: '9' });
    const before = (await sandbox.stats()).fastPath;
    const order: number[] = [];
    const calls = [0, 1, 2, 3].map((n) => sandbox.invoke('rcptto', { n, slow: n === 1 }, `c${n}`).then((v) => { order.push(n); return v; }));
    void Promise.allSettled([calls[0], calls[2], calls[3]]).then(() => answer());
    const values = await Promise.all(calls);
    assert.deepEqual(values, [0, 1, 2, 3].map((n) => ({ verdict: 'accept', text: String(n) })));
    assert.equal(order.at(-1), 1);
    assert.deepEqual(host.logs.filter((l) => l.level === 'info' && l.message.startsWith('run') && l.connectionId !== 'c9').map((l) => [l.connectionId, l.message]).sort(),
      [0, 1, 2, 3].map((n) => [`c${n}`, `run ${n}`]), 'stopped attempts log nothing');
    const after = (await sandbox.stats()).fastPath;
    const fastPath = { calls: after.calls - before.calls, overruns: after.overruns - before.overruns, descheduled: after.descheduled - before.descheduled, batches: after.batches - before.batches };
    assert.equal(fastPath.calls, 4);
    // The slow call overruns; on a loaded machine a descheduled quick one may too (it is then not counted
    // against its hook), and so may the first call in the other isolate (counted, as a first call can be).
    assert.ok(fastPath.overruns >= 1 && fastPath.overruns - fastPath.descheduled <= 2, JSON.stringify(fastPath));
    assert.ok(fastPath.batches >= 3, `batches ${fastPath.batches}: stopped at the slow call, which then runs first and alone`);
  });
});

test('an isolate lost to its memory limit during a batch: the call that did it fails alone', async () => {
  await withSandbox({
    host: recordingHost(),
    isolates: 1,
    memoryLimitMb: 16,
    timeoutMs: 5000,
    fastPathMs: 50, // the memory limit, not the fast path, must stop the growing call
    scripts: [js('data', `const cache = [];
      export default function (ctx) {
        if (ctx.grow) for (;;) cache.push(new Array(250000).fill(ctx.n));
        return accept({ text: 'ok ' + ctx.n });
      }`)],
  }, async (sandbox) => {
    const results = await settle([0, 1, 2].map((n) => sandbox.invoke('data', { n, grow: n === 1 }, `c${n}`)));
    assert.deepEqual(results[0], { status: 'fulfilled', value: { verdict: 'accept', text: 'ok 0' } });
    assert.deepEqual(results[2], { status: 'fulfilled', value: { verdict: 'accept', text: 'ok 2' } });
    const lost = results[1]!.status === 'rejected' ? results[1]!.reason : null;
    assert.ok(lost instanceof ScriptFailure && lost.kind === 'memory', String(lost));
    const stats = await sandbox.stats();
    assert.ok(stats.rebuilds >= 1);
    assert.equal(stats.failures.memory, 1);
  });
});

test('a script whose promise waits for the store settles when the answer is delivered; its hook keeps batching', async () => {
  // A store that answers only later (as Redis does): the hook's promise is still pending when the runner returns.
  const memory = new MemoryCounterStore();
  const later = <T>(value: T): Promise<T> => new Promise((resolve) => setImmediate(() => resolve(value)));
  const host = Object.assign(recordingHost(), { store: {
    kind: 'later', rate: (k: string, l: number, w: number) => later(memory.rateNow(k, l, w)), get: () => later(0), add: () => later(0),
    authFailures: () => memory.authFailures(), close: () => Promise.resolve(),
  } });
  await withSandbox({
    host,
    fastPathMs: 1000,
    timeoutMs: 10_000, // a hang guard: the default 100 ms is wall time a loaded machine can use up waiting for the answers
    scripts: [
      js('mailfrom', 'export default async (ctx) => { log("before", ctx.n); await rate("k", 1000000000, 60); if (ctx.bad) throw new Error("bad " + ctx.n); return accept({ text: "m" + ctx.n }); }'),
      js('helo', 'export default (ctx) => accept({ text: "h" + ctx.n })'),
    ],
  }, async (sandbox) => {
    const results = await settle([
      sandbox.invoke('mailfrom', { n: 1 }, 'c1'), sandbox.invoke('helo', { n: 2 }, 'c2'),
      sandbox.invoke('mailfrom', { n: 3, bad: true }, 'c3'), sandbox.invoke('helo', { n: 4 }, 'c4'),
    ]);
    assert.deepEqual(results.map((r) => (r.status === 'fulfilled' ? r.value : String(r.reason))), [
      { verdict: 'accept', text: 'm1' }, { verdict: 'accept', text: 'h2' }, '/srv/postern/scripts/mailfrom.js:1:107: Error: bad 3', { verdict: 'accept', text: 'h4' },
    ]);
    assert.deepEqual(host.logs.map((l) => [l.connectionId, l.message]), [['c1', 'before 1'], ['c3', 'before 3']]);
    const before = (await sandbox.stats()).fastPath;
    assert.deepEqual(before, { calls: 4, overruns: 0, descheduled: 0, batches: 1 });
    await Promise.all([sandbox.invoke('mailfrom', { n: 5 }, 'c5'), sandbox.invoke('mailfrom', { n: 6 }, 'c6')]);
    assert.deepEqual((await sandbox.stats()).fastPath, { calls: 6, overruns: 0, descheduled: 0, batches: 2 }, 'promise-returning calls of one turn share an entry');
  });
});

test('connection facts stay right across batches, when an isolate forgets them, and after a stopped batch', async () => {
  await withSandbox({
    host: gatedHost(),
    isolates: 1,
    fastPathMs: 20,
    timeoutMs: 10_000, // a hang guard for the call run alone
    scripts: [js('mailfrom', `export default (ctx) => {
      if (ctx.slow) { log('alone'); ${UNTIL_THE_GATE_OPENS} }
      return accept({ text: ctx.connection.id + ' ' + ctx.connection.helo });
    }`)],
  }, async (sandbox) => {
    const base = authContext().connection;
    const round = async (ids: number[], slowFirst = false): Promise<void> => {
      const calls = ids.map((i, at) => {
        const c = { ...base, id: `conn-${i}`, helo: `host-${i}.example` };
        return sandbox.invoke('mailfrom', { connection: c, slow: slowFirst && at === 0 }, c.id, connectionKey(c));
      });
      assert.deepEqual(await Promise.all(calls), ids.map((i) => ({ verdict: 'accept', text: `conn-${i} host-${i}.example` })));
    };
    const ids = Array.from({ length: 200 }, (_, i) => i); // more than an isolate keeps: it forgets mid-batch
    await round(ids);
    await round(ids.toReversed());
    await round([7, 8, 9, 10], true); // stopped: the host no longer knows what the isolate kept
    await round(ids);
    assert.ok((await sandbox.stats()).fastPath.overruns >= 1);
  });
});

test('a call whose promise awaits no host operation settles even when a later call of its batch is stopped', async () => {
  // The fast path is 1 ms and the second call spins 5·10⁷ iterations (counted work, not time) on every
  // attempt: its batch is stopped. The first call's promise was pending then; put back in front of the
  // stopped call, it kept that call from ever leading a batch (and so from running alone), and the same
  // batch was stopped again and again until both deadlines passed ("no isolate became free").
  await withSandbox({
    host: gatedHost(),
    isolates: 1,
    fastPathMs: 1,
    timeoutMs: 30_000, // a hang guard: a slow call's 5·10⁷ iterations ran past 10 s of wall time at load 40
    scripts: [js('mailfrom', `export default async (ctx) => {
      if (ctx.slow) { let x = 0; for (let i = 0; i < 5e7; i++) x += i; }
      await null;
      return accept({ text: 'n' + ctx.n });
    }`)],
  }, async (sandbox) => {
    const results = await settle([sandbox.invoke('mailfrom', { n: 0 }, 'c0'), sandbox.invoke('mailfrom', { n: 1, slow: true }, 'c1')]);
    assert.deepEqual(results.map((r) => (r.status === 'fulfilled' ? r.value : String(r.reason))), [
      { verdict: 'accept', text: 'n0' }, { verdict: 'accept', text: 'n1' },
    ]);
    // Each stop takes a call out of the batches: the first batch, the stopped call's own, nothing more.
    assert.ok((await sandbox.stats()).fastPath.batches <= 2, JSON.stringify((await sandbox.stats()).fastPath));
    // The isolate serves the next call as before.
    assert.deepEqual(await sandbox.invoke('mailfrom', { n: 2 }, 'c2'), { verdict: 'accept', text: 'n2' });
    const { rebuilds, failures } = await sandbox.stats();
    assert.equal(rebuilds, 0);
    assert.deepEqual(failures, { error: 0, timeout: 0, memory: 0, fenced: 0 });
  });
});

for (const isolates of [1, 2]) {
  test(`a stopped batch with pending promises, host operations in their continuations and two slow calls ends, counting once (${isolates} isolate${isolates > 1 ? 's' : ''})`, async () => {
    const store = new MemoryCounterStore();
    await withSandbox({
      host: { ...recordingHost(), store },
      isolates,
      fastPathMs: 1,
      timeoutMs: 30_000, // a hang guard: a slow call's 5·10⁷ iterations ran past 10 s of wall time at load 40
      scripts: [js('rcptto', `export default async (ctx) => {
        if (ctx.slow) { let x = 0; for (let i = 0; i < 5e7; i++) x += i; }
        await null;
        if (ctx.counts) return reject(String((await rate('k' + ctx.n, 1000, 60)).count));
        return accept({ text: 'n' + ctx.n });
      }`)],
    }, async (sandbox) => {
      const calls = [
        { n: 0, counts: true }, { n: 1 }, { n: 2, counts: true }, { n: 3, slow: true }, { n: 4 }, { n: 5, slow: true }, { n: 6, counts: true },
      ];
      const results = await settle(calls.map((ctx) => sandbox.invoke('rcptto', ctx, `c${ctx.n}`)));
      assert.deepEqual(results.map((r) => (r.status === 'fulfilled' ? r.value : String(r.reason))), calls.map((c) => (c.counts
        ? { verdict: 'reject', text: '1' } : { verdict: 'accept', text: 'n' + c.n })));
      for (const c of calls.filter((c) => c.counts)) assert.equal(await store.get(`script:rate:k${c.n}`), 1, `call ${c.n} counted once`);
      assert.deepEqual(await sandbox.invoke('rcptto', { n: 7 }, 'c7'), { verdict: 'accept', text: 'n7' });
      assert.deepEqual((await sandbox.stats()).failures, { error: 0, timeout: 0, memory: 0, fenced: 0 });
    });
  });
}

test('leftovers of a stopped batch that outlast the entry draining them start nothing in the next call', async () => {
  // Call 0's continuation spins, so the entry that takes the stopped batch's outcomes (and runs its leftover
  // continuations, refused) is cut off too, with call 1's continuation still queued. Run in the next entry
  // (call 0's re-run), it was taken for that call's and counted: call 1 then counted again when run again.
  const store = new MemoryCounterStore();
  await withSandbox({
    host: { ...recordingHost(), store },
    isolates: 1,
    fastPathMs: 1,
    timeoutMs: 30_000, // a hang guard (the cut-offs here are the fast path's): two 5·10⁷-iteration loops ran past 10 s at load 40
    scripts: [js('rcptto', `export default async (ctx) => {
      if (ctx.slow) { let x = 0; for (let i = 0; i < 5e7; i++) x += i; }
      await null;
      if (ctx.spinsAfter) { let x = 0; for (let i = 0; i < 5e7; i++) x += i; }
      if (ctx.counts) return reject(String((await rate('k' + ctx.n, 1000, 60)).count));
      return accept({ text: 'n' + ctx.n });
    }`)],
  }, async (sandbox) => {
    const calls = [{ n: 0, spinsAfter: true }, { n: 1, counts: true }, { n: 2, slow: true }];
    const results = await settle(calls.map((ctx) => sandbox.invoke('rcptto', ctx, `c${ctx.n}`)));
    assert.deepEqual(results.map((r) => (r.status === 'fulfilled' ? r.value : String(r.reason))), [
      { verdict: 'accept', text: 'n0' }, { verdict: 'reject', text: '1' }, { verdict: 'accept', text: 'n2' },
    ]);
    assert.equal(await store.get('script:rate:k1'), 1);
    assert.deepEqual(await sandbox.invoke('rcptto', { n: 3 }, 'c3'), { verdict: 'accept', text: 'n3' });
  });
});
