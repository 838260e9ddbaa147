/**
 * A worker that gets no CPU at all for longer than BUSY_WITHOUT_TIMERS_MS (30 s; 6 s here) is replaced in the end (a thread
 * that never runs must not keep its sessions for ever), but its silence is no script's doing: the script it had
 * running on an isolate thread (fastPathMs 0) is a bystander, and was blamed for the kill (a crash counted against
 * it: three such and a healthy script is fenced, its hook answering 451 4.3.0 from load alone). The supervisor blames
 * a silence only on a call running on the silent thread itself, and only when that thread ran for the limit.
 * Starved here: every thread of the worker in SCHED_IDLE on one CPU, where a SCHED_FIFO busy loop and a nice -20
 * one run for 12 s (the FIFO loop leaves the CPU's ordinary tasks 5% of it, which the nice -20 loop takes). Both
 * end themselves (timeout -s KILL) whatever happens to this test; the finally block also ends them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { ONE_WORKER, greeted, startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { runningMirror } from '../../engine/cluster/process-model.ts';

/** The wall-clock bound, shortened for this test (the product's 30 s would hold a CPU for 40 s of the suite's time). */
const BOUND_MS = 6000;
const HOG_SECONDS = BOUND_MS / 1000 + 6;
const CPU = '1';

/** Runs on an isolate thread (fastPathMs 0) for longer than the starvation, well within its time limit. */
const SLOW = 'export default function () { const end = Date.now() + 120000; while (Date.now() < end); return accept(); }';

/** Whether the worker's running-call mirror shows a call on an isolate thread (words 1.. of running-PID.bin). */
async function isolateCallRunning(c: ClusterProcess, pid: number): Promise<boolean> {
  const bytes = await readFile(`${runningMirror(c.dataDir, pid)}.bin`).catch(() => null);
  if (!bytes || bytes.length < 8) return false;
  const words = new Int32Array(new Uint8Array(bytes).buffer);
  return words.slice(1, 4).some((w) => w !== 0);
}

function hog(...how: string[]): ChildProcess {
  return spawn('timeout', ['-s', 'KILL', String(HOG_SECONDS), ...how, 'taskset', '-c', CPU, 'sh', '-c', 'while :; do :; done'], { stdio: 'ignore' });
}

test('a worker starved of CPU past the wall-clock bound, while a script runs on an isolate thread: replaced, the script not blamed', { timeout: 240_000 }, async () => {
  const c = await startCluster({ config: `${ONE_WORKER}sandbox: { timeoutMs: 180000, fastPathMs: 0 }\n`, scripts: { 'rcptto.ts': SLOW }, env: { POSTERN_SILENCE_BOUND_MS: String(BOUND_MS) } });
  const hogs: ChildProcess[] = [];
  let pid = 0;
  try {
    pid = await workerPid(c, 0);
    const client = await greeted(c);
    assert.equal((await client.command('MAIL FROM:<a@example.test>')).code, 250);
    const reply = client.command('RCPT TO:<b@example.test>', 200_000).catch(() => null);
    await c.waitFor('the call running on an isolate thread', () => isolateCallRunning(c, pid));
    hogs.push(hog('chrt', '-f', '10'), hog('nice', '-n', '-20'));
    execFileSync('taskset', ['-a', '-p', '-c', CPU, String(pid)], { stdio: 'ignore' });
    execFileSync('chrt', ['-a', '-i', '-p', '0', String(pid)], { stdio: 'ignore' });
    await c.waitFor('the supervisor\'s kill', () => c.logs.some((l) => l.childPid === pid && /stopped answering: killing it/.test(String(l.msg))), 200_000);
    await Promise.all(hogs.map((h) => h.exitCode === null && h.signalCode === null ? new Promise((r) => h.once('exit', r)) : null));
    await reply;
    client.socket.destroy();
    await c.waitFor('the worker replaced', async () => (await c.cluster()).processes.find((p) => p.role === 'worker' && p.ready && p.pid !== pid && p.restarts === 1), 120_000);
    assert.deepEqual(c.logs.filter((l) => /died .*while running|fenced/.test(String(l.msg))).map((l) => l.msg), [], 'no script blamed');
  } finally {
    // SIGTERM, which timeout passes on to the loop (a SIGKILL would end timeout alone and leave the loop running).
    for (const h of hogs) if (h.exitCode === null && h.signalCode === null) h.kill('SIGTERM');
    await c.stop();
  }
});
