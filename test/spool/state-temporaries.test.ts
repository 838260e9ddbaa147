// The temporary file a state write goes through before its rename, in a spool written by more than one process (a
// worker's: the worker at its start, the queue process, `postern queue`). Named with its writer's pid: one whose writer
// was killed is removed by the queue process's next scan, not left until the worker's next start; one whose writer
// runs is left alone by a worker's start, so the write it belongs to is recorded.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { diskFaults, type DiskFaults, isStopped } from '../helpers/disk-faults.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { until } from '../helpers/wait.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { spoolMessage } from './helpers/spool-message.ts';

const scratch = useScratchDir('postern-state-tmp-');
let faults: DiskFaults;
before(() => { faults = diskFaults(); });

const WRITER = new URL('./helpers/update-state.ts', import.meta.url).pathname;
const deferred = { attempts: 1, nextAttemptAt: new Date().toISOString(), recipients: [{ address: 'b@example.com' }], errors: [] };

/** A spool holding one message attempted once, as a worker leaves it. */
async function setUp(name: string): Promise<{ root: string; id: string }> {
  const root = join(scratch.path, name, 'spool');
  const spool = new Spool(root);
  await spool.init();
  const id = await spoolMessage(spool, [Buffer.from('Subject: deferred\r\n\r\nbody\r\n')]);
  await spool.updateState(id, deferred);
  spool.close();
  return { root, id };
}

/** The state writer's process (the queue process's updateState), the disk faults preloaded; resolves with how it ended. */
function startWriter(root: string, id: string, attempts: number): { pid: number; ended: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> } {
  const child = spawn(process.execPath, [WRITER, root, id, String(attempts)], { env: { ...process.env, ...faults.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => { stdout += b.toString(); });
  child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
  return { pid: child.pid!, ended: new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stdout, stderr }))) };
}

const temporaries = (root: string): string[] => readdirSync(join(root, 'queue')).filter((n) => n.endsWith('.tmp'));

test('a state write killed before its rename: the next scan removes its temporary file, the state before it stays', async () => {
  const { root, id } = await setUp('killed');
  faults.armFor('rename-kill', `${id}.state`);
  const end = await startWriter(root, id, 2).ended;
  assert.equal(end.signal, 'SIGKILL', `killed at the rename (exit ${end.code}: ${end.stderr})`);
  assert.equal(temporaries(root).length, 1, 'the state was written, not renamed in');
  // The queue process restarted (no worker restart, which clears it too).
  const queue = new Spool(root);
  assert.deepEqual((await queue.scan()).map((e) => [e.id, e.hasState]), [[id, true]]);
  assert.deepEqual(temporaries(root), [], 'the temporary file is gone');
  assert.equal((await queue.readState(id))?.attempts, 1);
  queue.close();
});

test('a worker\'s start while the queue process writes a state: the write\'s temporary file is left to it, and the state recorded', async () => {
  const { root, id } = await setUp('running');
  faults.armFor('rename-stop', `${id}.state`);
  const writer = startWriter(root, id, 2);
  try {
    await until('the writer stopped at its rename', () => faults.taken('rename-stop') && isStopped(writer.pid));
    // The worker starts again (its spool's init) while the write waits for its rename.
    const worker = new Spool(root);
    await worker.init();
    worker.close();
    assert.equal(temporaries(root).length, 1, 'a running writer\'s temporary file is not an orphan');
  } finally {
    process.kill(writer.pid, 'SIGCONT');
  }
  const end = await writer.ended;
  assert.equal(end.stdout.trim(), 'recorded', `the write ended (exit ${end.code}: ${end.stderr})`);
  const spool = new Spool(root);
  assert.equal((await spool.readState(id))?.attempts, 2, 'the state the writer recorded');
  spool.close();
  assert.deepEqual(temporaries(root), []);
});
