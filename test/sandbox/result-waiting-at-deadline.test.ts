/**
 * A server whose event loop gets the CPU back late (descheduled on a loaded machine, or held by other work) runs its
 * timers before it reads what came meanwhile. The sandbox's deadline sweep then failed calls whose isolate thread had
 * finished them in time and whose results were waiting to be read — `no result within … ms + 500 ms: the script had
 * not stopped`, a 451 for a script well within its limit, its isolate watched as overdue. The sweep now looks after
 * those results were read.
 *
 * Real isolates and threads. The script tells the host it runs (thread-hold.ts, answered at once), then computes for
 * some milliseconds; this process's event loop is held from the end of that turn for longer than timeoutMs + 500 ms,
 * while the isolate thread finishes the call.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setThreadHoldForTests } from '../../engine/sandbox/thread-hold.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';
import { LOAD_SLACK_MS } from '../../engine/sandbox/isolate-slot.ts';

const TIMEOUT_MS = 1000;
const HOLD_MS = TIMEOUT_MS + 500 + 1000;
/** Holds this event loop for `ms` from the check phase of this turn (after the poll phase a host request came in). */
function holdFromCheckPhase(ms: number): void {
  setImmediate(() => {
    const end = performance.now() + ms;
    while (performance.now() < end) { /* the process has the CPU, its event loop does not */ }
  });
}

/** Some milliseconds of work after the host answered: still running when the event loop is held. */
const SCRIPT = `export default (ctx) => {
  if (ctx.hold) { __holdThreadForTests(); let x = 0; for (let i = 0; i < 2e6; i++) x = (x * 31 + i) | 0; ctx.n += x & 0; }
  return reject("r" + ctx.n);
}`;

test('a result an isolate thread delivered in time is taken, though the event loop came to it after the deadline', async () => {
  let held = 0;
  // Called on this thread when the script reaches it; the script goes on at once, and this event loop is held from
  // the check phase of this turn (after the poll phase in which the request came: the result is not there yet).
  setThreadHoldForTests(() => {
    held++;
    holdFromCheckPhase(HOLD_MS);
    return Promise.resolve();
  });
  try {
    await withSandbox({ host: recordingHost(), isolates: 1, fastPathMs: 0, timeoutMs: TIMEOUT_MS, scripts: [js('rcptto', SCRIPT)] }, async (sandbox) => {
      assert.deepEqual(await sandbox.invoke('rcptto', { n: 0 }, 'warm'), { verdict: 'reject', text: 'r0' });
      for (let n = 1; n <= 2; n++) {
        const outcome = await sandbox.invoke('rcptto', { n, hold: true }, `c${n}`).then((v) => v, (e: Error) => e.message);
        assert.deepEqual(outcome, { verdict: 'reject', text: `r${n}` }, `call ${n}`);
      }
      assert.equal(held, 2);
      const stats = await sandbox.stats();
      assert.deepEqual([stats.failures.timeout, stats.rebuilds], [0, 0], 'no timeout counted, no isolate taken for stuck');
    });
  } finally {
    setThreadHoldForTests(null);
  }
});

/**
 * The same for a top level as a generation is built (a start, a reload): its evaluation is given up past its limit
 * (max(1 s, timeoutMs)) + LOAD_SLACK_MS by a timer, which ran before the evaluation's end was read. A top level that had
 * finished in time failed the load, `top level did not finish within 1000 ms`: on a loaded machine, a reload refused.
 */
test('a top level that finished in time is not failed because the event loop came to its end late', async () => {
  let held = 0;
  setThreadHoldForTests(() => {
    held++;
    holdFromCheckPhase(1000 + LOAD_SLACK_MS + 1000);
    return Promise.resolve();
  });
  try {
    const top = 'let top = 0;\n__holdThreadForTests();\nfor (let i = 0; i < 2e6; i++) top = (top * 31 + i) | 0;\n';
    await withSandbox({ host: recordingHost(), isolates: 1, scripts: [js('rcptto', `${top}export default () => reject("loaded " + (top & 0))`)] }, async (sandbox) => {
      assert.equal(held, 1);
      assert.deepEqual(await sandbox.invoke('rcptto', {}, 'c1'), { verdict: 'reject', text: 'loaded 0' });
    });
  } finally {
    setThreadHoldForTests(null);
  }
});
