/**
 * A child's watchdog thread that fails as it starts (out of file descriptors while it loads its module:
 * the worker at its limit when it was started, or soon after) emitted 'error' with nobody listening, which
 * ended the whole process: the sessions on a worker cut, the queue process's deliveries interrupted, and a
 * replacement that may fail the same way. The failure is logged and another watchdog thread started; the
 * process serves on. The fault is injected at the C library (test/helpers/disk-faults.c): the first open
 * of the watchdog's module, in whichever child starts one first, fails with EMFILE.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { greeted, startCluster, ONE_WORKER } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';

test('a watchdog thread that fails to start is started again; its process is not lost', { timeout: 120_000 }, async () => {
  const faults = diskFaults();
  faults.arm('open-watchdog-emfile');
  const c = await startCluster({ env: faults.env, config: ONE_WORKER });
  try {
    const failed = await c.waitFor('the watchdog failure logged', () => c.logs.find((l) => /its watchdog thread failed \(.*EMFILE.*\); another starts/.test(String(l.msg))));
    assert.equal(faults.taken('open-watchdog-emfile'), true);
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    const client = await greeted(c);
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'])).code, 250);
    await client.quit();
    const status = await c.cluster();
    assert.deepEqual(status.processes.map((p) => p.restarts), status.processes.map(() => 0), `no process was replaced (${String(failed.msg)})`);
  } finally {
    await c.stop();
  }
});
