// An isolate that reaches its memory limit is disposed by isolated-vm from its own thread, at any moment. The
// watchdog of a call on an isolate thread asks executing() every 50 ms whether it still runs (isolate-slot.ts,
// cutOffIfIdle): read between its isDisposed check and its wallTime reads, wallTime threw "Isolate is disposed"
// in that timer callback — an uncaught exception, and the worker process with every session on it was gone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import ivm from 'isolated-vm';
import { executing } from '../../engine/sandbox/ivm-workarounds.ts';
import { exitWithoutTeardown } from '../helpers/exit-without-teardown.ts';

// Isolates disposed by their memory limit under a running script: V8's teardown at exit crashed now and then
// (SIGSEGV after the test had passed, a failed file to the runner).
exitWithoutTeardown();

test('executing() of an isolate its memory limit disposes meanwhile is false, not an exception', { timeout: 120_000 }, async () => {
  // Asked without a pause while the script fills its heap: the disposal lands inside executing() in about half of
  // the runs (11 of 20 here before the fix).
  for (let run = 0; run < 20; run++) {
    const isolate = new ivm.Isolate({ memoryLimit: 8 });
    const context = await isolate.createContext();
    const filling = context.eval(`const a = []; for (;;) a.push('x'.repeat(1000) + a.length)`, { timeout: 10_000 }).then(
      () => assert.fail('the script should exhaust its memory'),
      (e: Error) => e,
    );
    const start = performance.now();
    let sawRunning = false;
    while (!isolate.isDisposed && performance.now() - start < 10_000) sawRunning = executing(isolate) || sawRunning;
    assert.equal(executing(isolate), false, 'disposed: not executing');
    const failure = await filling;
    assert.match(failure.message, /memory limit/);
    assert.ok(sawRunning, 'seen executing while it ran');
  }
});
