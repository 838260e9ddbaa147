// Crash consistency of a deferred message's move out of the journal (Spool.moveOutOfJournal) in the queue process,
// against `postern queue delete` run meanwhile in another process, with the mover killed (SIGKILL) at chosen system
// calls. What is deleted stays deleted, and is not delivered again; what is not deleted stays queued.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { diskFaults, type DiskFaults, isStopped } from '../helpers/disk-faults.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { runCli } from '../helpers/cli.ts';
import { until } from '../helpers/wait.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { spoolMessage } from './helpers/spool-message.ts';

const scratch = useScratchDir('postern-move-crash-');
let faults: DiskFaults;
before(() => { faults = diskFaults(); });

const MOVER = new URL('./helpers/move-out.ts', import.meta.url).pathname;
const deferred = { attempts: 2, nextAttemptAt: new Date(Date.now() + 3_600_000).toISOString(), recipients: [{ address: 'b@example.com' }], errors: ['b@example.com: 451 try later'] };

/** A data directory whose worker spool holds one message deferred twice (with its state file), and its config. */
async function setUp(name: string): Promise<{ root: string; config: string; id: string }> {
  const dataDir = join(scratch.path, name, 'data');
  const root = join(dataDir, 'spool');
  const spool = new Spool(root);
  await spool.init();
  const id = await spoolMessage(spool, [Buffer.from('Subject: deferred\r\n\r\nbody\r\n')]);
  await spool.updateState(id, deferred);
  spool.close();
  await mkdir(join(scratch.path, name, 'etc'));
  const config = join(scratch.path, name, 'etc', 'postern.yaml');
  await writeFile(config, `dataDir: ${dataDir}\nlisteners:\n  - name: in\n    listen: 127.0.0.1:0\n`);
  return { root, config, id };
}

/** The mover's process, with the disk faults preloaded; resolves with how it ended. */
function startMover(root: string, id: string): { pid: number; ended: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string }> } {
  const child = spawn(process.execPath, [MOVER, root, id], { env: { ...process.env, ...faults.env }, stdio: ['ignore', 'pipe', 'inherit'] });
  let stdout = '';
  child.stdout.on('data', (b: Buffer) => { stdout += b.toString(); });
  return { pid: child.pid!, ended: new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stdout }))) };
}


for (const first of ['the queue process', 'the worker'] as const) {
  test(`postern queue delete between the move's state check and its rename, the mover killed after the rename: the message stays deleted (${first} looks first)`, async () => {
    const { root, config, id } = await setUp(first.replace(/ /g, '-'));
    faults.armFor('rename-stop', `${id}.msg`);
    const mover = startMover(root, id);
    try {
      await until('the mover stopped at its rename', () => faults.taken('rename-stop') && isStopped(mover.pid));
      const deleted = await runCli(['queue', 'delete', id, '-c', config]);
      assert.equal(deleted.code, 0, deleted.stderr);
      assert.match(deleted.stdout, new RegExp(`${id}: deleted`));
      // The rename goes ahead; the mover is killed at the sync of the done list that follows it.
      faults.armFor('fsync-kill', '.done');
      process.kill(mover.pid, 'SIGCONT');
    } catch (err) {
      process.kill(mover.pid, 'SIGKILL');
      throw err;
    }
    const end = await mover.ended;
    assert.equal(end.signal, 'SIGKILL', `killed at the done list's sync (exit ${end.code}, printed ${end.stdout})`);
    assert.ok(existsSync(join(root, 'queue', `${id}.msg`)), 'the move renamed its file in after the delete');

    const listed = await runCli(['queue', 'list', '--json', '-c', config]);
    assert.deepEqual((JSON.parse(listed.stdout) as { messages: unknown[] }).messages, [], 'postern queue list does not name it');
    if (first === 'the worker') {
      // The worker starts again (its spool's init) before the queue process looks.
      const worker = new Spool(root);
      await worker.init();
      assert.equal(existsSync(join(root, 'queue', `${id}.msg`)), false, 'the worker\'s start removes what the move left');
      assert.deepEqual(await worker.scan(), []);
      worker.close();
    }
    // The queue process starts again and looks at the worker's spool (through a reader's view, as it does).
    const queue = new Spool(root);
    assert.deepEqual((await queue.scan()).map((e) => e.id), [], 'the queue process does not find it (it would deliver it again, to every recipient)');
    queue.close();
    assert.equal(existsSync(join(root, 'queue', `${id}.msg`)), false, 'the file the move left is gone');
  });
}

test('postern queue delete --all while a message moves out of the journal: it is deleted with the others, not missed between the queue folder and the journal', async () => {
  const { root, config, id } = await setUp('delete-all');
  const writer = new Spool(root);
  await writer.init();
  const other = await spoolMessage(writer, [Buffer.from('Subject: other\r\n\r\nbody\r\n')]);
  writer.close();
  faults.armFor('rename-stop', `${id}.msg`);
  const mover = startMover(root, id);
  let cliPid = 0;
  let deleting: Promise<Awaited<ReturnType<typeof runCli>>> | null = null;
  try {
    await until('the mover stopped at its rename', () => faults.taken('rename-stop') && isStopped(mover.pid));
    // The delete has read the queue folder (no file yet) and is about to read the journal.
    faults.armFor('open-stop', '/journal/key');
    deleting = runCli(['queue', 'delete', '--all', '-c', config], { env: faults.env, onSpawn: (pid) => { cliPid = pid; } });
    await until('the delete stopped before reading the journal', () => faults.taken('open-stop') && cliPid > 0 && isStopped(cliPid));
    // The move ends meanwhile: its file renamed in, its journal record marked done.
    process.kill(mover.pid, 'SIGCONT');
    const moved = await mover.ended;
    assert.equal(moved.stdout.trim(), 'true', `the move ended (exit ${moved.code})`);
    process.kill(cliPid, 'SIGCONT');
  } catch (err) {
    process.kill(mover.pid, 'SIGKILL');
    if (cliPid) process.kill(cliPid, 'SIGKILL');
    throw err;
  }
  const deleted = await deleting;
  assert.equal(deleted.code, 0, deleted.stderr);
  const listed = await runCli(['queue', 'list', '--json', '-c', config]);
  assert.deepEqual((JSON.parse(listed.stdout) as { messages: Array<{ id: string }> }).messages.map((m) => m.id), [], `every message deleted (the delete said: ${deleted.stdout.trim()}; ${other} not deferred)`);
});

test('the mover killed at its rename: the message stays in the journal, and the queue process\'s next scan removes the temporary copy', async () => {
  const { root, id } = await setUp('killed-at-rename');
  faults.armFor('rename-kill', `${id}.msg`);
  const end = await startMover(root, id).ended;
  assert.equal(end.signal, 'SIGKILL');
  const temporary = (): string[] => readdirSync(join(root, 'queue')).filter((n) => n.endsWith('.tmp'));
  assert.equal(temporary().length, 1, 'the copy was written, not renamed in');
  // The queue process again (no worker restart, which would clear it too).
  const queue = new Spool(root);
  assert.deepEqual((await queue.scan()).map((e) => [e.id, e.hasState]), [[id, true]], 'queued, from the journal');
  assert.deepEqual(temporary(), [], 'the temporary copy is gone');
  assert.equal(existsSync(queue.messagePath(id)), false);
  assert.equal(await queue.moveOutOfJournal(id), true, 'and the move is made again');
  assert.deepEqual((await queue.scan()).map((e) => e.id), [id]);
  queue.close();
});

test('postern queue delete during an attempt: the queue process\'s view of the journal, which still indexes the message, does not bring it back by moving it', async () => {
  const { root, config, id } = await setUp('delete-during-attempt');
  // The queue process: its view of the worker's journal indexes the message as the attempt reads it.
  const queue = new Spool(root);
  await queue.readForDelivery(id);
  const deleted = await runCli(['queue', 'delete', id, '-c', config]);
  assert.match(deleted.stdout, new RegExp(`${id}: deleted`));
  // The attempt ends deferred, as the runner records it: the state written, then "still queued?", then the move.
  await queue.updateState(id, { ...deferred, attempts: 3 });
  const stillQueued = await queue.has(id);
  if (stillQueued) await queue.moveOutOfJournal(id);
  else await queue.remove(id); // the runner's "deleted meanwhile: no orphan state"
  const moved = existsSync(queue.messagePath(id));
  queue.close();
  const restarted = new Spool(root);
  assert.deepEqual((await restarted.scan()).map((e) => e.id), [], 'not queued again');
  restarted.close();
  assert.equal(moved, false, 'no file of its own made for it');
  assert.equal(stillQueued, false, 'the queue process sees it deleted');
});

test('postern queue delete between two attempts, before the queue process\'s next scan: the next attempt finds it gone, through a view that still indexes it', async () => {
  const { root, config, id } = await setUp('delete-before-attempt');
  const queue = new Spool(root);
  await queue.readForDelivery(id);
  const deleted = await runCli(['queue', 'delete', id, '-c', config]);
  assert.match(deleted.stdout, new RegExp(`${id}: deleted`));
  // The runner takes ENOENT for "deleted meanwhile" and does not deliver.
  await assert.rejects(queue.readForDelivery(id), (err: NodeJS.ErrnoException) => err.code === 'ENOENT');
  assert.equal(await queue.has(id), false);
  queue.close();
});
