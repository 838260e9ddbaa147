// The queue process (a reader of a worker's journal) removing a delivered message marks it done durably: its done
// line is written, then synced on the thread pool. The worker sees the line at once (it does not wait for the sync)
// and, the message being the last of its segment, deletes the segment; the reader's next look at that segment
// (another message's refreshDoneOf, a scan) dropped it and closed its files, the done list's handle under the sync
// still queued: the sync failed (EBADF, or EINVAL on whatever file took the number), the removal threw, and the queue
// logged that it could not record the outcome of a delivery that had gone through, leaving the state file behind.
//
// The thread pool is held with opens of FIFOs (each blocks a thread until a writer comes) so that the sync is still
// queued when the reader drops the segment: an order of events, not a timing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { useScratchDir } from '../helpers/scratch.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { spoolMessage } from './helpers/spool-message.ts';

const scratch = useScratchDir('postern-reader-durable-mark-');

/** Every thread of the pool (and a few more queued) blocked in open() of a FIFO; the returned function frees them. */
function holdThreadPool(dir: string): { release(): Promise<void> } {
  const threads = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  const fifos: string[] = [];
  const opens: Promise<unknown>[] = [];
  for (let i = 0; i < threads + 2; i++) {
    const fifo = join(dir, `fifo-${i}`);
    execFileSync('mkfifo', [fifo]);
    fifos.push(fifo);
    opens.push(open(fifo, 'r').then((h) => h.close()));
  }
  return {
    async release() {
      // O_RDWR on a FIFO never blocks on Linux and lets the blocked (and queued) read-only opens through.
      const fds = fifos.map((f) => openSync(f, 'r+'));
      await Promise.all(opens);
      for (const fd of fds) closeSync(fd);
    },
  };
}

test('a reader marks the last message of a segment done durably and drops the segment the writer deleted meanwhile: the removal still succeeds', async () => {
  const root = join(scratch.path, 'spool', 'worker-0');
  const first = new Spool(root);
  await first.init();
  const id = await spoolMessage(first, [Buffer.from('Subject: once\r\n\r\nbody\r\n')]);
  first.close();
  // The worker running again: the segment is no longer its active one, so it is deleted once its last record is done.
  const worker = new Spool(root);
  await worker.init();
  const queue = new Spool(root);
  try {
    assert.ok(await queue.has(id), 'the queue process sees the message');
    const pool = holdThreadPool(scratch.path);
    const removal = queue.remove(id).then(() => null, (err: unknown) => err);
    // The worker sees the done line (not yet synced) and deletes the segment; its scan's folder read waits for the pool.
    const scanned = worker.scan();
    assert.equal(existsSync(join(root, 'journal', '0000000001.seg')), false, 'the worker deleted the segment');
    // The queue process looks at the message again (another attempt's check): its view drops the deleted segment.
    const stillThere = queue.has(id);
    await pool.release();
    assert.equal(await removal, null, 'the removal of a message whose segment is gone succeeds');
    assert.equal(await stillThere, false);
    assert.deepEqual((await scanned).map((e) => e.id), []);
  } finally {
    queue.close();
    worker.close();
  }
});
