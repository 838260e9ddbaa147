// A child stopped on purpose (`kill -TERM <pid>` of one worker to recycle it, of the queue process) says so as its stop
// begins, ends cleanly (exit code 0) and is replaced. Its exit was logged at error as a death: "worker process died
// (exit code 0): replacing it" (for the queue process with "a delivery it had under way may be made again"), which
// pages the on-call for what an administrator just did, and says a delivery may be repeated where none can be (its
// attempts settle before a clean exit). Now it is "worker 0 stopped (signalled, exit code 0): replacing it", at warn.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, ONE_WORKER } from '../helpers/cluster.ts';

test('a worker and the queue process each stopped alone (SIGTERM): replaced, logged as stopped, not as died', { timeout: 120_000 }, async () => {
  const c = await startCluster({ config: ONE_WORKER });
  try {
    await c.waitFor('the worker and the queue process ready', async () => (await c.cluster()).processes.filter((p) => p.ready).length === 2);
    for (const role of ['worker', 'queue'] as const) {
      const pid = (await c.cluster()).processes.find((p) => p.role === role)!.pid!;
      process.kill(pid, 'SIGTERM');
      await c.waitFor(`the ${role} process replaced`, async () => (await c.cluster()).processes.find((p) => p.role === role && p.restarts === 1 && p.ready && p.pid !== pid));
      const exits = c.logs.filter((l) => l.childPid === pid && /replacing it/.test(String(l.msg)));
      assert.deepEqual(exits.map((l) => [l.level, l.msg]), [[40, `${role} 0 stopped (signalled, exit code 0): replacing it`]], `the ${role}'s exit`);
    }
    assert.deepEqual(c.logs.filter((l) => /died/.test(String(l.msg))).map((l) => l.msg), [], 'no death logged');
  } finally {
    await c.stop();
  }
});
