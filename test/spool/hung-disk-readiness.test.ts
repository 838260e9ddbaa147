/**
 * /readyz on a spool whose filesystem stopped answering (a hard NFS mount whose server went away: statfs waits in the
 * kernel). Its spool check asked the filesystem (statfs, a write probe) and waited for the answer: /readyz never
 * answered, nor did any later one (each waits for the gathering under way), nor /metrics (which gathers the same
 * checks for its gauge): a load balancer saw timeouts rather than a reason, and the monitoring saw nothing at all.
 * Now the check gives up on a look that has not answered within its deadline (503, saying so), starts no second look
 * while one hangs, and says ready again once the filesystem answers. The fault is injected at the C library
 * (test/helpers/disk-faults.c, statfs-hang, preloaded); the server and the HTTP clients are real.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ONE_WORKER, startCluster } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';

/** An answer, however long it takes: far longer than any deadline of the server's (a hang fails the test here). */
const ANSWERED = 90_000;

async function get(port: number, path: string): Promise<{ status: number; text: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(ANSWERED) });
  return { status: r.status, text: await r.text() };
}

test('the spool\'s filesystem stops answering statfs: /readyz answers 503 saying so, /metrics still answers, and once it answers again /readyz is 200', { timeout: 300_000 }, async () => {
  const faults = diskFaults();
  const c = await startCluster({ env: faults.env, config: `${ONE_WORKER}admin: { listen: "127.0.0.1:{PORT:admin}" }\n` });
  const admin = c.port('admin');
  try {
    assert.equal((await get(admin, '/readyz')).status, 200);
    faults.armFor('statfs-hang', '/spool'); // <dataDir>/spool, whose filesystem the spool check looks at
    const hung = await get(admin, '/readyz');
    assert.equal(hung.status, 503, hung.text);
    assert.match(JSON.parse(hung.text).checks.spool.detail, /has not answered/);
    assert.equal(faults.hungCalls('statfs-hang') >= 1, true, 'the look did hang');
    const calls = faults.hungCalls('statfs-hang');
    const again = await get(admin, '/readyz');
    assert.equal(again.status, 503, 'asked again: still not ready');
    const metrics = await get(admin, '/metrics');
    assert.equal(metrics.status, 200);
    assert.match(metrics.text, /^postern_readiness_check_passed\{check="spool"\} 0$/m);
    assert.ok(faults.hungCalls('statfs-hang') <= calls + 1, 'no second look of the supervisor\'s while the first hangs (each holds a thread of the pool)');
    faults.disarm('statfs-hang');
    await c.waitFor('ready again', async () => (await get(admin, '/readyz')).status === 200);
  } finally {
    faults.disarm('statfs-hang');
    await c.stop();
  }
});
