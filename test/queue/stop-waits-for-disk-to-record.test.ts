/**
 * A stop while outcomes of deliveries wait in the queue process's memory for a disk that does not confirm writes (a
 * state write past spool.syncDeadlineMs; those after it refused at once). The stop tried to write them once, was
 * refused at once, and the process ended without waiting (a hung sync): a disk that answered seconds later (a storage
 * path's failover) found them gone, and the restart sent their delivered recipients again. Now the stop waits for the
 * disk to answer, within 20 s of its start (the supervisor kills a child at 30 s), and writes them then. The fault is
 * injected at the C library (test/helpers/disk-faults.c, fdatasync-hang on a state's temporary file, preloaded); the
 * server and the next hop are real.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { greeted, startCluster, ONE_WORKER, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';

/** One message to `recipients`; its queue id. */
async function send(c: ClusterProcess, recipients: string[], subject: string): Promise<string> {
  const client = await greeted(c);
  assert.equal((await client.command('MAIL FROM:<a@example.test>')).code, 250);
  for (const to of recipients) assert.equal((await client.command(`RCPT TO:<${to}>`)).code, 250);
  assert.equal((await client.command('DATA')).code, 354);
  client.write(`Subject: ${subject}\r\n\r\nx\r\n.`);
  const r = await client.read(60_000);
  assert.equal(r.code, 250, r.text);
  await client.quit();
  return /queued as (\S+)/.exec(r.text)![1]!;
}

const notRecorded = (c: ClusterProcess, id: string): boolean =>
  c.logs.some((l) => l.id === id && l.level === 50 && /cannot record the outcome of a delivery attempt/.test(String(l.msg)));

test('a stop while outcomes wait for a hung disk: it waits for the disk to answer and records them', { timeout: 180_000 }, async () => {
  const faults = diskFaults();
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && address.startsWith('later') ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const c = await startCluster({ env: faults.env, config: `${ONE_WORKER}spool: { syncDeadlineMs: 5000 }\n${deliveryToSink(sink.port, { retrySchedule: [3600] })}` });
  let exited = false;
  const exit = new Promise<number | null>((resolve) => c.proc.once('exit', (code) => { exited = true; resolve(code); }));
  try {
    faults.armFor('fdatasync-hang', '.tmp'); // the temporary file a state is written through (spool.ts #writeBeside)
    const first = await send(c, ['later0@example.test'], 'first');
    await c.waitFor('the first state write hangs', () => faults.hungCalls('fdatasync-hang') >= 1, 60_000);
    await c.waitFor('its record refused past the deadline', () => notRecorded(c, first), 60_000);
    // Its record refused at once (an earlier write hangs): delivered to now@, deferred for later1@, in memory alone.
    const second = await send(c, ['now@example.test', 'later1@example.test'], 'second');
    await c.waitFor('the second message\'s record refused', () => notRecorded(c, second), 60_000);

    c.proc.kill('SIGTERM');
    // The disk answers once the stop has begun recording (or the process has ended, as it did without waiting).
    await c.waitFor('the stop under way', () => exited || c.logs.some((l) => l.component === 'queue' && /^stopping: the outcomes of .* not recorded yet/.test(String(l.msg))), 60_000);
    faults.disarm('fdatasync-hang');
    assert.equal(await exit, 0);

    const stateOf = join(c.dataDir, 'spool', 'worker-0', 'queue', `${second}.state`);
    assert.ok(existsSync(stateOf), 'the second message\'s outcome is on disk');
    const state = JSON.parse(readFileSync(stateOf, 'utf8')) as { recipients: Array<{ address: string; status?: string }> };
    assert.equal(state.recipients.find((r) => r.address === 'now@example.test')?.status, 'delivered', 'now@ recorded as delivered: not sent again at the next start');
    assert.ok(!c.logs.some((l) => /did not end within 30 s of the stop/.test(String(l.msg))), 'not killed by the supervisor');
  } finally {
    faults.disarm('fdatasync-hang');
    await c.stop().catch(() => undefined);
    await sink.close();
  }
});
