/**
 * A reload build that finished within its deadline is a finished build, however late the event loop gets to its
 * result. A build's last steps come back from other threads (an isolate's top level, a file read on libuv's pool):
 * a process that gets the CPU back late (descheduled on a loaded machine, or its event loop held by a long turn)
 * runs its timers before it reads what those threads delivered, and a deadline judged in the timer refused a
 * reload that had finished in time ("reload did not finish within N ms").
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { withDeadline } from '../../engine/reload/build-deadline.ts';

/** Hold this thread's event loop for `ms` (nothing else of this process's event loop runs meanwhile). */
function holdEventLoop(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

test('work whose result another thread delivered within the deadline, while the event loop was held, is done, not timed out', async () => {
  const posted = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(`
    const { parentPort, workerData } = require('node:worker_threads');
    parentPort.postMessage('built');
    Atomics.store(workerData, 0, 1);`, { eval: true, workerData: posted });
  try {
    const work = new Promise<string>((resolve) => worker.once('message', resolve));
    const result = withDeadline(work, 100);
    // The event loop held from here: until the worker thread has delivered its result, then past the deadline.
    const start = performance.now();
    while (Atomics.load(posted, 0) === 0) holdEventLoop(1);
    holdEventLoop(Math.max(0, 150 - (performance.now() - start)));
    assert.deepEqual(await result, { kind: 'done', value: 'built' });
  } finally { await worker.terminate(); }
});

test('work that never settles still times out', async () => {
  assert.deepEqual(await withDeadline(new Promise(() => {}), 50), { kind: 'timedOut' });
});
