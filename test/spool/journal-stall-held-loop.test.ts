/**
 * A journal flush the disk confirmed within spool.syncDeadlineMs keeps its records, however late the event loop gets
 * to the confirmation. The journal judged its flush stalled in a plain interval timer (#checkStall), and at the
 * deadline compared the clock alone (hungSince: MAIL FROM's early 451, /readyz): a process that gets the CPU back
 * late (a loaded machine descheduled it) runs its timers before it polls, so a flush whose fdatasync had returned in
 * time, its completion waiting to be read, was found past its deadline: its records were refused ("the disk has not
 * confirmed"), their clients got 451 for mail the disk held, and new transactions were refused as if the disk hung.
 * SyncWatch (message files, holds) was already judged after the reads (sync-deadline.ts); the journal, which every
 * small message goes through, was not.
 *
 * The fdatasync runs on a worker thread (libuv's pool runs the real one on a thread too): it completes while the test
 * holds this thread's event loop past the deadline, and its completion waits to be read, as the pool's would.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Journal } from '../../engine/spool/journal.ts';

const DEADLINE_MS = 1000;
/** Past the deadline and past the journal's stall-check interval (STALL_CHECK_MS, 1 s), so that both are due. */
const HOLD_MS = DEADLINE_MS + 1000 + 200;

function holdEventLoop(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

test('a journal flush confirmed while the event loop was held past the deadline keeps its record; nothing is left hung', async () => {
  const fs = (await import('node:fs')).default; // the CommonJS object: patching it and syncing reaches the journal's named imports
  const { syncBuiltinESMExports } = await import('node:module');
  const dir = mkdtempSync(join(tmpdir(), 'postern-journal-held-'));
  const journal = Journal.open(dir, { writable: true, syncDeadline: { ms: DEADLINE_MS } });
  await journal.append('held-1', [Buffer.from('Subject: first\r\n\r\nbody\r\n')]); // the segment and its entry synced

  const flags = new Int32Array(new SharedArrayBuffer(4));
  // The disk's side: fdatasyncs the journal's descriptor (shared by the process's threads), sets flags[0], says so.
  const disk = new Worker(`
    const fs = require('node:fs');
    const { parentPort, workerData: { flags } } = require('node:worker_threads');
    parentPort.on('message', (fd) => {
      let error = null;
      try { fs.fdatasyncSync(fd); } catch (err) { error = err.message; }
      Atomics.store(flags, 0, 1);
      parentPort.postMessage(error);
    });`, { eval: true, workerData: { flags } });
  const real = fs.fdatasync;
  fs.fdatasync = ((fd: number, done: (err: Error | null) => void) => {
    disk.once('message', (error: string | null) => done(error ? new Error(error) : null));
    disk.postMessage(fd);
  }) as typeof fs.fdatasync;
  syncBuiltinESMExports();
  try {
    const second = journal.append('held-2', [Buffer.from('Subject: second\r\n\r\nbody\r\n')]);
    // What a command read before the completion sees (MAIL FROM's early 451, /readyz): the first timer after the hold.
    let inFirstTurn: number | null | undefined;
    setTimeout(() => { inFirstTurn = journal.hungSince(); }, 0);
    // Held from the flush's start: the disk confirms meanwhile; the hold lasts past the deadline and a stall check.
    while (Atomics.load(flags, 0) === 0) holdEventLoop(1);
    holdEventLoop(HOLD_MS);
    await second;
    assert.equal(inFirstTurn, null, 'the flush, its completion not read yet, was not taken for hung');
    assert.equal(journal.hungSince(), null, 'no flush counted as hung');
    assert.equal(journal.has('held-2'), true);
  } finally {
    fs.fdatasync = real;
    syncBuiltinESMExports();
    await disk.terminate();
    journal.close();
  }
});
