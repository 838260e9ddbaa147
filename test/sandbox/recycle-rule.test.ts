/**
 * When a process must be replaced after isolated-vm gave up on a thread (unrecoverable.ts mustRecycle): not for
 * a top level given up on while loading (a refused reload: the running generation serves on), unless such
 * sources pile up (each keeps a parked thread and an isolate's memory); always for a call given up on. The rule's
 * state is the process's own: this file runs in its own process, and the steps below build on each other.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_STUCK_LOADS, loadEnded, loadStarted, mustRecycle, onMustRecycle, reportAbandonedRunning, reportUnrecoverable, stuckAtLoad } from '../../engine/sandbox/unrecoverable.ts';

const script = (n: number) => ({ hook: 'rcptto' as const, file: `/srv/scripts/rcptto.js`, sha256: String(n).padStart(64, '0') });

test('loads given up on do not recycle the process until they pile up; a signal during a load waits for it; a call given up on recycles', () => {
  const told: string[] = [];
  onMustRecycle((reason) => told.push(reason));

  // A signal while a top level loads (a V8 out-of-memory in it) waits for the load's outcome.
  loadStarted();
  reportUnrecoverable('oom');
  assert.equal(mustRecycle(), false);
  reportAbandonedRunning(script(1), 'load');
  loadEnded();
  assert.equal(mustRecycle(), false, 'one stuck load: the process serves on');
  assert.equal(stuckAtLoad(script(1)), true, 'that source is not run again');
  assert.equal(stuckAtLoad(script(2)), false, 'another source (the file changed) is');

  for (let n = 2; n < MAX_STUCK_LOADS; n++) reportAbandonedRunning(script(n), 'load');
  reportAbandonedRunning(script(1), 'load'); // the same source again counts once
  assert.equal(mustRecycle(), false, `${MAX_STUCK_LOADS - 1} distinct stuck loads: still serving`);
  assert.deepEqual(told, []);

  reportAbandonedRunning(script(MAX_STUCK_LOADS), 'load');
  assert.equal(mustRecycle(), true, `${MAX_STUCK_LOADS} distinct stuck loads: replaced`);
  assert.deepEqual(told, ['oom'], 'told once');
  reportAbandonedRunning(script(99)); // a call: would recycle too, told no second time
  assert.deepEqual(told, ['oom']);
});
