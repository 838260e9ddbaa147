/**
 * sandbox.timeoutMs at the largest value the schema takes (2^31-1 ms, Node's longest timer). The watchdog of a
 * call on an isolate thread waits timeoutMs + 250 ms: past a timer's reach Node ran it after 1 ms, and every
 * call that outran the fast path was cut off ("did not finish within 2147483897 ms"), a 451 for every client.
 * The warning Node gives for such a timer is counted (emitted when the timer is set: no timing involved); the
 * call's outcome shows what a client saw.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { js } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

test('sandbox.timeoutMs 2147483647: a call on an isolate thread is not cut off, no timer overflows', async () => {
  const overflows: string[] = [];
  const onWarning = (w: Error): void => { if (w.name === 'TimeoutOverflowWarning') overflows.push(w.message); };
  process.on('warning', onWarning);
  try {
    const host = { lookup: () => null, log: () => undefined };
    // Work of some milliseconds at least, on any machine: the overflowed watchdog came after 1.
    const source = 'export default () => { let x = 0; for (let i = 0; i < 2e8; i++) x += i % 7; return reject(`worked ${x > 0}`); }';
    await withSandbox({ host, isolates: 1, fastPathMs: 0, timeoutMs: 2 ** 31 - 1, scripts: [js('helo', source)] }, async (sandbox) => {
      assert.deepEqual(await sandbox.invoke('helo', {}, 'c1'), { verdict: 'reject', text: 'worked true' });
    });
  } finally {
    process.off('warning', onWarning);
  }
  assert.deepEqual(overflows, []);
});
