/**
 * A worker whose process was merely held back for a moment (SIGSTOP of that process alone for 1.5 s, then SIGCONT: as a
 * loaded host or a swap-in holds one process and not the others) is not taken for hung: the supervisor's limit is 3 s
 * (its own lateness discounted), the worker's watchdog thread was held still with it (its late tick counts from
 * now). The session it held goes on, its message is accepted, and a script call under way when it stopped is answered.
 * (Stopped past 3 s it is killed and replaced, its acknowledged messages kept: test/cluster/chaos-kills; its scripts
 * are not blamed for that: test/cluster/stopped-worker-not-blamed.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ONE_WORKER, greeted, spooled, startCluster, workerPid } from '../helpers/cluster.ts';

/** Runs 300 ms by the clock on an isolate thread: the stop lands in it, or just before it. */
const SLOW = 'export default function () { const end = Date.now() + 300; while (Date.now() < end); return accept(); }';

test('a worker stopped alone for 1.5 s, mid-session and mid-script: not killed, the session and its message go on', { timeout: 120_000 }, async () => {
  const c = await startCluster({ config: `${ONE_WORKER}sandbox: { timeoutMs: 10000, fastPathMs: 0 }\n`, scripts: { 'rcptto.ts': SLOW } });
  try {
    const pid = await workerPid(c, 0);
    const client = await greeted(c);
    assert.equal((await client.command('MAIL FROM:<a@example.test>')).code, 250);
    const rcpt = client.command('RCPT TO:<b@example.test>', 60_000);
    process.kill(pid, 'SIGSTOP');
    await new Promise((r) => setTimeout(r, 1500)); // the fault's length, not a timing assertion
    process.kill(pid, 'SIGCONT');
    assert.equal((await rcpt).text, '250 2.1.5 Accepted');
    assert.equal((await client.command('DATA')).code, 354);
    client.write('Subject: across the stop\r\n\r\nx\r\n.\r\n');
    assert.equal((await client.read(60_000)).code, 250);
    await client.quit();
    assert.equal((await spooled(c)).size, 1, 'the message is in the spool');
    const status = await c.cluster();
    assert.deepEqual(status.processes.map((p) => [p.role, p.restarts, p.pid === pid || p.role !== 'worker']), [['worker', 0, true], ['queue', 0, true]]);
    assert.deepEqual(c.logs.filter((l) => /hung|stopped answering|died/.test(String(l.msg))).map((l) => l.msg), [], 'nothing taken for hung');
  } finally {
    await c.stop();
  }
});
