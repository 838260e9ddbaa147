/**
 * A loaded machine deschedules an isolate thread in the middle of a trivial call: the call misses its deadline
 * and fails closed (451) in time, but the isolate is not stuck — it stops as soon as it gets the CPU back. It was
 * abandoned and rebuilt all the same (the slot's cut-off at timeoutMs + 250 ms, then the pool at its deadline),
 * which cost the loaded machine a new isolate and every script compiled again, so more calls missed their
 * deadlines. The test holds the thread without CPU (thread-hold.ts: what descheduling looks like to the process)
 * and counts rebuilds; other threads' CPU time meanwhile does not make it stuck; one that never comes back is still
 * abandoned (a thread that gets CPU and does not stop: deadlines.test.ts, a builtin V8 cannot interrupt).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { ScriptFailure, type Sandbox } from '../../engine/sandbox/index.ts';
import { setThreadHoldForTests } from '../../engine/sandbox/thread-hold.ts';
import { shownStuck } from '../../engine/sandbox/thread-cpu.ts';
import { OVERDUE_CAP_MS, STUCK_CPU_MS } from '../../engine/sandbox/sandbox.ts';
import { once } from 'node:events';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';
import { until } from '../helpers/wait.ts';

const SCRIPT = js('rcptto', 'export default (ctx) => { if (ctx.hold) __holdThreadForTests(); return accept(); }');
const isTimeout = (e: unknown): boolean => e instanceof ScriptFailure && e.kind === 'timeout';

/** Each hold lasts until the test lets it go; `let go()` releases the current one. */
function holds(): { count: () => number; letGo: () => void } {
  let release: () => void = () => undefined;
  let count = 0;
  setThreadHoldForTests(() => {
    count++;
    return new Promise<void>((resolve) => { release = resolve; });
  });
  return { count: () => count, letGo: () => release() };
}

async function withHeldSandbox(fn: (sandbox: Sandbox, hold: ReturnType<typeof holds>, host: ReturnType<typeof recordingHost>) => Promise<void>): Promise<void> {
  const hold = holds();
  const host = recordingHost();
  try {
    await withSandbox({ host, scripts: [SCRIPT], timeoutMs: 100, isolates: 1, fastPathMs: 0 }, (sandbox) => fn(sandbox, hold, host));
  } finally {
    hold.letGo();
    setThreadHoldForTests(null);
  }
}

test('an isolate thread descheduled past its call\'s deadline: the call fails closed, the isolate is kept', async () => {
  await withHeldSandbox(async (sandbox, hold) => {
    const N = 3;
    for (let i = 0; i < N; i++) {
      await assert.rejects(sandbox.invoke('rcptto', { hold: true }, `c${i}`), isTimeout, 'fails closed at its deadline');
      hold.letGo(); // the thread gets the CPU back
      assert.deepEqual(await sandbox.invoke('rcptto', {}, `d${i}`), { verdict: 'accept' }, 'the next call is served');
    }
    const stats = await sandbox.stats();
    assert.equal(hold.count(), N);
    assert.equal(stats.failures.timeout, N);
    assert.equal(stats.abandoned, 0, 'no isolate abandoned');
    assert.equal(stats.rebuilds, 0, 'no isolate rebuilt');
  });
});

test('an overdue isolate whose thread gets no CPU is not abandoned for the CPU time other threads have meanwhile', async () => {
  await withHeldSandbox(async (sandbox, hold, host) => {
    await assert.rejects(sandbox.invoke('rcptto', { hold: true }, 'c1'), isTimeout);
    // Another thread of the process works meanwhile (as another isolate running a script in time, or libuv's pool
    // hashing a password): three times STUCK_CPU_MS of its own CPU time. The held isolate's thread gets none. Before,
    // the CPU time of all threads together counted as the held one's, and it was abandoned and rebuilt.
    const worker = new Worker(`
      const start = process.threadCpuUsage();
      for (;;) { const u = process.threadCpuUsage(start); if (u.user + u.system >= ${3 * STUCK_CPU_MS} * 1000) break; }`, { eval: true });
    await once(worker, 'exit');
    // Abandoned only by the bounded wait (OVERDUE_CAP_MS), if the worker's CPU time took that long on a loaded machine.
    const abandoned = host.logs.filter((l) => /it is abandoned and replaced/.test(l.message)).map((l) => l.message);
    assert.ok(abandoned.every((m) => /it did not stop within 5000 ms after/.test(m)), `not for other threads' CPU time: ${JSON.stringify(abandoned)}`);
    hold.letGo(); // the thread gets the CPU back: it stops, and (unless the wait ran out) its isolate serves on
    assert.deepEqual(await sandbox.invoke('rcptto', {}, 'c2'), { verdict: 'accept' });
    const stats = await sandbox.stats();
    assert.deepEqual([stats.abandoned, stats.rebuilds], [abandoned.length, abandoned.length]);
  });
});

test('an overdue isolate that never comes back is abandoned after a bounded wait, even without CPU', async () => {
  await withHeldSandbox(async (sandbox, hold, host) => {
    await assert.rejects(sandbox.invoke('rcptto', { hold: true }, 'c1'), isTimeout);
    await until('the overdue isolate is abandoned', async () => (await sandbox.stats()).abandoned === 1, { timeoutMs: OVERDUE_CAP_MS + 15_000 });
    assert.ok(host.logs.some((l) => /still running rcptto at its deadline \(100 ms \+ 500 ms\) and it did not stop within 5000 ms after/.test(l.message)), JSON.stringify(host.logs));
    assert.deepEqual(await sandbox.invoke('rcptto', {}, 'c2'), { verdict: 'accept' }, 'served on the replacement');
    assert.equal(hold.count(), 1);
  });
});

test('shown stuck: every thread runnable at the deadline and still runnable had STUCK_CPU_MS since (one did, at least)', () => {
  const ms = STUCK_CPU_MS * 1000;
  const at = new Map([[1, { cpu: 0, runnable: true }], [2, { cpu: 0, runnable: true }], [3, { cpu: 0, runnable: false }]]);
  // Thread 1 spins (the stuck isolate, or another isolate's call in time); thread 2 runnable without CPU: perhaps the
  // overdue isolate's, descheduled.
  assert.equal(shownStuck(at, new Map([[1, { cpu: ms, runnable: true }], [2, { cpu: 0, runnable: true }], [3, { cpu: 5 * ms, runnable: true }]]), ms), false);
  // Thread 2 went to sleep meanwhile (a call in time that ended): thread 1, which spins on, is the overdue isolate's.
  assert.equal(shownStuck(at, new Map([[1, { cpu: ms, runnable: true }], [2, { cpu: 1000, runnable: false }]]), ms), true);
  // Nobody runnable at the deadline got the CPU (a thread held still then is 3's case, not runnable): nothing shown.
  assert.equal(shownStuck(at, new Map([[1, { cpu: 0, runnable: false }], [2, { cpu: 0, runnable: false }], [3, { cpu: 5 * ms, runnable: true }]]), ms), false);
});
