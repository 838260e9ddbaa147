// A reader of another process's journal (the queue process reading a worker's) and the writer deleting a segment whose
// records are all done, which it does at its start (and whenever it sees the last done line): its file first, its done
// list second. A reader that had the segment's records in hand and then found no done list took every record for
// undelivered. Seen as a flaky test (test/cluster/stop-during-delivery.test.ts, under load): the supervisor killed, the
// old queue process delivered and marked the message done, the new server's worker started (deleting the segment) while
// its queue process first read the worker's journal: "messages":1, a message already delivered, to be delivered again.
// Also a done line read before its record is taken: a record its writer refused after a failed sync (never acknowledged,
// so a reader takes it only once the writer is gone) came back then, and was delivered besides the client's new copy.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { diskFaults, type DiskFaults, isStopped } from '../helpers/disk-faults.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { until } from '../helpers/wait.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { spoolMessage } from './helpers/spool-message.ts';

const scratch = useScratchDir('postern-reader-collected-');
let faults: DiskFaults;
before(() => { faults = diskFaults(); });

const READER = new URL('./helpers/scan-and-read.ts', import.meta.url).pathname;
const WRITER = new URL('./helpers/refusing-writer.ts', import.meta.url).pathname;
const SEGMENT = '0000000001';

/**
 * A worker's spool holding one message, delivered: marked done by another process (the queue process, a reader), and
 * its segment not yet deleted (the worker that wrote it stopped before it saw the done line).
 */
async function deliveredNotCollected(name: string): Promise<{ root: string; id: string }> {
  const root = join(scratch.path, name, 'data', 'spool', 'worker-0');
  const worker = new Spool(root);
  await worker.init();
  const id = await spoolMessage(worker, [Buffer.from('Subject: once\r\n\r\nbody\r\n')]);
  const queue = new Spool(root);
  await queue.remove(id, { hasState: false });
  queue.close();
  worker.close();
  assert.ok(existsSync(join(root, 'journal', `${SEGMENT}.seg`)) && existsSync(join(root, 'journal', `${SEGMENT}.done`)), 'the segment and its done list are still there');
  return { root, id };
}

/** The worker starting again: its journal's start deletes the segment whose records are all done. */
async function workerStarts(root: string): Promise<void> {
  const worker = new Spool(root);
  await worker.init();
  worker.close();
  assert.equal(existsSync(join(root, 'journal', `${SEGMENT}.seg`)), false, 'the worker\'s start deleted the segment');
}

test('the queue process reads a worker\'s segment for the first time and the worker, starting, deletes it before the reader reads its done list: the delivered message is not found, nor delivered again', async () => {
  const { root, id } = await deliveredNotCollected('first-look');
  // The reader has read the segment's records and is about to read its done list.
  faults.armFor('open-stop', `/journal/${SEGMENT}.done`);
  const child = spawn(process.execPath, [READER, root], { env: { ...process.env, ...faults.env }, stdio: ['ignore', 'pipe', 'inherit'] });
  let stdout = '';
  child.stdout.on('data', (b: Buffer) => { stdout += b.toString(); });
  const ended = new Promise<number | null>((resolve) => child.on('exit', resolve));
  try {
    await until('the reader stopped before reading the done list', () => faults.taken('open-stop') && isStopped(child.pid!));
    await workerStarts(root);
    process.kill(child.pid!, 'SIGCONT');
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  assert.equal(await ended, 0);
  const seen = JSON.parse(stdout) as { found: string[]; readable: string[] };
  assert.deepEqual(seen, { found: [], readable: [] }, `${id}: delivered already, its segment deleted`);
});

test('a message the queue process knows, marked done by another process (postern queue delete) whose segment the worker\'s start then deletes: not read for delivery from the deleted segment', async () => {
  const root = join(scratch.path, 'known', 'data', 'spool', 'worker-0');
  const worker = new Spool(root);
  await worker.init();
  const id = await spoolMessage(worker, [Buffer.from('Subject: deleted\r\n\r\nbody\r\n')]);
  worker.close();
  // The queue process's view knows it (a scan found it).
  const queue = new Spool(root);
  assert.deepEqual((await queue.scan()).map((e) => e.id), [id]);
  // `postern queue delete` marks it done; the worker starts again (a restart, a recycle) and deletes the segment.
  const command = new Spool(root);
  await command.remove(id, { hasState: false });
  command.close();
  await workerStarts(root);
  // The queue process, about to attempt it, looks at it again.
  assert.equal(await queue.has(id), false, 'the queue process sees it gone');
  await assert.rejects(queue.readForDelivery(id, { hasState: false }), { code: 'ENOENT' }, 'not read from the deleted segment (it would be delivered)');
  assert.deepEqual(await queue.scan(), []);
  queue.close();
});

test('a record its writer refused (its sync failed; the client sends the message again), read by the queue process before its writer stopped: not delivered after the writer is gone', { timeout: 120_000 }, async () => {
  const root = join(scratch.path, 'refused', 'data', 'spool', 'worker-0');
  const writer = spawn(process.execPath, [WRITER, root], { env: { ...process.env, ...faults.env }, stdio: ['pipe', 'pipe', 'inherit'] });
  const ended = new Promise<number | null>((resolve) => writer.on('exit', resolve));
  const said: Array<{ acked: string[]; refused: string[] }> = [];
  let partial = '';
  writer.stdout.on('data', (b: Buffer) => {
    const lines = (partial + b.toString()).split('\n');
    partial = lines.pop()!;
    for (const line of lines) said.push(JSON.parse(line) as { acked: string[]; refused: string[] });
  });
  const acked: string[] = [];
  const refused: string[] = [];
  const queue = new Spool(root);
  try {
    await until('the first message spooled', () => said.length === 1);
    for (let round = 1; !said.some((s) => s.refused.length > 0); round++) {
      assert.ok(round <= 20, 'a failed sync refused a message within 20 rounds');
      faults.arm('fdatasync-eio');
      writer.stdin.write('next\n');
      await until(`message ${round} spooled or refused`, () => said.length === round + 1);
    }
    for (const s of said) { acked.push(...s.acked); refused.push(...s.refused); }
    // The queue process looks while the writer runs: the refused record is in the segment, and so is its done line.
    assert.deepEqual((await queue.scan()).map((e) => e.id).sort(), [...acked].sort());
  } finally {
    writer.stdin.end(); // the worker stops (a restart, a crash): its lock goes
  }
  assert.equal(await ended, 0);
  assert.deepEqual((await queue.scan()).map((e) => e.id).sort(), [...acked].sort(), `the refused ${refused.join(', ')} is not delivered besides the client's new copy`);
  await assert.rejects(queue.readForDelivery(refused[0]!, { hasState: false }), { code: 'ENOENT' });
  queue.close();
});
