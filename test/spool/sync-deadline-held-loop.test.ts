/**
 * A disk write confirmed within the spool's sync deadline keeps its message, however late the event loop gets to the
 * confirmation. The sync runs on another thread (here a worker thread's fsync of a real file, as libuv's pool runs the
 * spool's): it completes while the test holds the event loop, as a loaded machine that descheduled the process holds
 * it, and its completion waits to be read while the deadline passes. An event loop that gets the CPU back runs its
 * timers before it polls, and the deadline, judged in its timer, refused the message as "the disk has not confirmed"
 * though the disk had, and counted the sync as hung, refusing the next write at once too.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SyncWatch } from '../../engine/spool/sync-deadline.ts';

const DEADLINE_MS = 1000;

/** Hold this thread's event loop for `ms`. */
function holdEventLoop(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

test('a sync that completed within the deadline while the event loop was held past it: confirmed, nothing hung', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-sync-held-'));
  const flags = new Int32Array(new SharedArrayBuffer(4));
  // The disk's side: writes and fsyncs a file once asked, sets flags[0], and says so.
  const disk = new Worker(`
    const fs = require('node:fs');
    const { parentPort, workerData: { path, flags } } = require('node:worker_threads');
    parentPort.on('message', () => {
      const fd = fs.openSync(path, 'w');
      fs.writeSync(fd, 'message');
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      Atomics.store(flags, 0, 1);
      parentPort.postMessage('synced');
    });`, { eval: true, workerData: { path: join(dir, 'message'), flags } });
  try {
    const watch = new SyncWatch({ ms: DEADLINE_MS });
    const confirmed = watch.within('the message file', async () => {
      disk.postMessage('sync');
      await once(disk, 'message');
    });
    // Held from the start: the sync completes meanwhile; the hold lasts past the deadline.
    while (Atomics.load(flags, 0) === 0) holdEventLoop(1);
    holdEventLoop(DEADLINE_MS + 200);
    await confirmed;
    assert.equal(watch.hung, 0);
  } finally {
    await disk.terminate();
    await rm(dir, { recursive: true, force: true });
  }
});
