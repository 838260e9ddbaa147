/**
 * A stop (SIGTERM) while a write of the queue process's spool hangs (a disk that stopped answering). Its close ended
 * at once, but process.exit() waits for every thread of libuv's pool to end, the one in the hung fdatasync too: the
 * queue process sat there until the supervisor killed it 30 s later, and nothing said why (the supervisor's kill was
 * silent). Now a process that knows a write of its spool has not returned says so and ends without waiting for it,
 * and a kill at the end of the supervisor's 30 s is said at error. (The outcome it keeps in memory first waits up to
 * 20 s of the stop for the disk: stop-waits-for-disk-to-record.test.ts.) The fault is injected at the C library
 * (test/helpers/disk-faults.c, fdatasync-hang on a state file's temporary file, preloaded); the server is real.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { greeted, startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';

test('a stop while a state write hangs: the queue process says so and ends by itself, not by the supervisor\'s kill', { timeout: 180_000 }, async () => {
  const faults = diskFaults();
  const sink = await startSink({ decide: (stage) => (stage === 'rcpt' ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const c = await startCluster({ env: faults.env, config: `${ONE_WORKER}spool: { syncDeadlineMs: 5000 }\n${deliveryToSink(sink.port, { retrySchedule: [2] })}` });
  try {
    faults.armFor('fdatasync-hang', '.tmp'); // the temporary file a state is written through (spool.ts #writeBeside)
    const client = await greeted(c);
    assert.equal((await client.sendMail('a@example.test', ['later@example.test'], 'Subject: x\r\n\r\nx\r\n')).code, 250);
    await client.quit();
    await c.waitFor('the state write hangs', () => faults.hungCalls('fdatasync-hang') >= 1);
    await c.waitFor('past the deadline', () => c.logs.some((l) => /cannot record the outcome of a delivery attempt/.test(String(l.msg))), 30_000);
    const exited = new Promise<number | null>((resolve) => c.proc.once('exit', (code) => resolve(code)));
    c.proc.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.ok(c.logs.some((l) => l.component === 'queue' && /a write of its spool has not returned .* ending without waiting for it/.test(String(l.msg))), 'the queue process says why it ends so');
    assert.ok(!c.logs.some((l) => /did not end within 30 s of the stop/.test(String(l.msg))), 'not killed by the supervisor');
  } finally {
    faults.disarm('fdatasync-hang');
    await c.stop().catch(() => undefined);
    await sink.close();
  }
});
