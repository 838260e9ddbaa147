/**
 * A worker the supervisor kills because it went silent while it was stopped (a debugger, `gcore` of a large heap, a
 * host paging it out: the whole process held still while the supervisor ran) did nothing a script made it do: its
 * event loop did not stall in a script (its watchdog thread, held still with it, saw no stall). The scripts it had
 * running on isolate threads are bystanders. Each such kill was counted as their crash, and after three a healthy
 * script was fenced: its hook answered 451 4.3.0 until the file changed, from load alone.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { ONE_WORKER, greeted, startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { runningMirror } from '../../engine/cluster/process-model.ts';

/** Runs a while on an isolate thread (fastPathMs 0): long enough to be stopped in, well within its 10 s. */
const SLOW = 'export default function () { const end = Date.now() + 1500; while (Date.now() < end); return accept(); }';

/** Whether the worker's running-call mirror shows a call on an isolate thread (words 1.. of running-PID.bin). */
async function isolateCallRunning(c: ClusterProcess, pid: number): Promise<boolean> {
  const bytes = await readFile(`${runningMirror(c.dataDir, pid)}.bin`).catch(() => null);
  if (!bytes || bytes.length < 8) return false;
  const words = new Int32Array(new Uint8Array(bytes).buffer);
  return words.slice(1, 4).some((w) => w !== 0);
}

test('a worker stopped whole past the supervisor\'s hang limit, three times, while a script runs: replaced, the script not fenced', { timeout: 240_000 }, async () => {
  const c = await startCluster({ config: `${ONE_WORKER}sandbox: { timeoutMs: 10000, fastPathMs: 0 }\n`, scripts: { 'rcptto.ts': SLOW } });
  try {
    for (let round = 1; round <= 3; round++) {
      const pid = await workerPid(c, 0);
      const client = await greeted(c);
      assert.equal((await client.command('MAIL FROM:<a@example.test>')).code, 250);
      const reply = client.command('RCPT TO:<b@example.test>', 60_000).catch(() => null);
      await c.waitFor(`round ${round}: the call running on an isolate thread`, () => isolateCallRunning(c, pid));
      process.kill(pid, 'SIGSTOP');
      await c.waitFor(`round ${round}: the supervisor's kill`, () => c.logs.some((l) => l.childPid === pid && /stopped answering: killing it/.test(String(l.msg))));
      try { process.kill(pid, 'SIGCONT'); } catch { /* gone already */ }
      await reply;
      client.socket.destroy();
      await c.waitFor(`round ${round}: the worker replaced`, async () => (await c.cluster()).processes.find((p) => p.role === 'worker' && p.ready && p.pid !== pid && p.restarts === round));
    }
    const client = await greeted(c);
    assert.equal((await client.command('MAIL FROM:<a@example.test>')).code, 250);
    assert.equal((await client.command('RCPT TO:<b@example.test>', 60_000)).text, '250 2.1.5 Accepted', 'the script still runs');
    await client.quit();
    assert.deepEqual((await c.cluster()).fences, [], 'nothing fenced');
    assert.deepEqual(c.logs.filter((l) => /died .*while running|fenced/.test(String(l.msg))).map((l) => l.msg), [], 'no script blamed');
  } finally {
    await c.stop();
  }
});
