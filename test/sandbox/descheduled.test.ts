/**
 * A loaded machine deschedules an isolate thread in the middle of a trivial call: the call misses its deadline
 * and fails closed (451) in time, but the isolate is not stuck — it stops as soon as it gets the CPU back. It was
 * abandoned and rebuilt all the same (the slot's cut-off at timeoutMs + 250 ms, then the pool at its deadline),
 * which cost the loaded machine a new isolate and every script compiled again, so more calls missed their
 * deadlines. The test holds the thread without CPU (thread-hold.ts: what descheduling looks like to the process)
 * and counts rebuilds; a thread that gets CPU and does not stop, or never comes back, is still abandoned.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { ScriptFailure, type Sandbox } from '../../engine/sandbox/index.ts';
import { setThreadHoldForTests } from '../../engine/sandbox/thread-hold.ts';
import { OVERDUE_CAP_MS } from '../../engine/sandbox/sandbox.ts';
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

test('an overdue isolate whose process threads get CPU and which still does not stop is abandoned and replaced', async () => {
  await withHeldSandbox(async (sandbox, hold, host) => {
    await assert.rejects(sandbox.invoke('rcptto', { hold: true }, 'c1'), isTimeout);
    // CPU for threads other than the event loop's: the held isolate could have had it (an upper bound), yet did not stop.
    const spinner = new Worker('const end = Date.now() + 60000; while (Date.now() < end) {}', { eval: true });
    try {
      await until('the overdue isolate is abandoned', async () => (await sandbox.stats()).abandoned === 1);
    } finally {
      await spinner.terminate();
    }
    const abandoned = host.logs.find((l) => /still running rcptto at its deadline \(100 ms \+ 500 ms\) and other threads had \d+ ms of CPU time since and it did not stop; it is abandoned and replaced/.test(l.message));
    assert.ok(abandoned, JSON.stringify(host.logs));
    // Told after the call's verdict (451 at its deadline): it still names the session (its cid), as its other lines do.
    assert.equal(abandoned.connectionId, 'c1');
    assert.equal(hold.count(), 1);
    await until('the isolate is rebuilt', async () => (await sandbox.stats()).isolates[0]!.state === 'idle');
    assert.deepEqual(await sandbox.invoke('rcptto', {}, 'c2'), { verdict: 'accept' });
    assert.equal((await sandbox.stats()).rebuilds, 1);
  });
});

test('an overdue isolate that never comes back is abandoned after a bounded wait, even without CPU', async () => {
  await withHeldSandbox(async (sandbox, hold, host) => {
    await assert.rejects(sandbox.invoke('rcptto', { hold: true }, 'c1'), isTimeout);
    await until('the overdue isolate is abandoned', async () => (await sandbox.stats()).abandoned === 1, { timeoutMs: OVERDUE_CAP_MS + 15_000 });
    assert.ok(host.logs.some((l) => /still running rcptto at its deadline \(100 ms \+ 500 ms\) and (it did not stop within 5000 ms after|other threads had)/.test(l.message)), JSON.stringify(host.logs));
    assert.deepEqual(await sandbox.invoke('rcptto', {}, 'c2'), { verdict: 'accept' }, 'served on the replacement');
    assert.equal(hold.count(), 1);
  });
});
