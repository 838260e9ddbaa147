/**
 * Outcomes of deliveries kept in the queue process's memory while the disk did not confirm writes (a state write past
 * spool.syncDeadlineMs; the writes after it refused at once, never started). Once the disk answered, /readyz was 200
 * again, but such an outcome stayed in memory alone until the message's next attempt, the first retry step later (5
 * minutes by default, more after each refused try): a crash of the queue process meanwhile (the OOM killer, kill -9, a
 * hang the supervisor kills) lost it, and the restart sent to its delivered recipients again, minutes after the disk
 * had come back healthy. Now they are written as soon as the disk answers. The fault is injected at the C library
 * (test/helpers/disk-faults.c, fdatasync-hang on a state's temporary file, preloaded); the server and the next hop are
 * real, and the queue process is killed with SIGKILL.
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

async function queuePid(c: ClusterProcess, not?: number): Promise<number> {
  return c.waitFor('the queue process ready', async () => {
    const p = (await c.cluster()).processes.find((x) => x.role === 'queue');
    return p?.ready && p.pid && p.pid !== not ? p.pid : null;
  }, 60_000);
}

test('outcomes kept in memory on a hung disk are written once it answers: a crash after that sends no recipient twice', { timeout: 180_000 }, async () => {
  const faults = diskFaults();
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && address.startsWith('later') ? { code: 451, text: '4.2.0 Try again later' } : null) });
  // A first retry step far beyond the test: no attempt writes the outcome for it.
  const c = await startCluster({ env: faults.env, config: `${ONE_WORKER}spool: { syncDeadlineMs: 5000 }\n${deliveryToSink(sink.port, { retrySchedule: [3600] })}` });
  const copies = (subject: string): number => sink.messages.filter((m) => m.data.toString().includes(`Subject: ${subject}\r\n`)).length;
  try {
    faults.armFor('fdatasync-hang', '.tmp'); // the temporary file a state is written through (spool.ts #writeBeside)
    const first = await send(c, ['later0@example.test'], 'first');
    await c.waitFor('the first state write hangs', () => faults.hungCalls('fdatasync-hang') >= 1, 60_000);
    await c.waitFor('its record refused past the deadline', () => notRecorded(c, first), 60_000);
    // Its record refused at once (an earlier write hangs): delivered to now@, deferred for later1@, in memory alone.
    const second = await send(c, ['now@example.test', 'later1@example.test'], 'second');
    await c.waitFor('the second message\'s record refused', () => notRecorded(c, second), 60_000);
    assert.equal(copies('second'), 1);
    assert.equal(faults.hungCalls('fdatasync-hang'), 1, 'the second record never reached the disk');

    faults.disarm('fdatasync-hang');
    const stateOf = (id: string): string => join(c.dataDir, 'spool', 'worker-0', 'queue', `${id}.state`);
    const recorded = (): boolean => {
      if (!existsSync(stateOf(second))) return false;
      const state = JSON.parse(readFileSync(stateOf(second), 'utf8')) as { recipients: Array<{ address: string; status?: string }> };
      return state.recipients.some((r) => r.address === 'now@example.test' && r.status === 'delivered');
    };
    await c.waitFor('the second message\'s outcome written once the disk answers', recorded, 60_000);

    // A crash of the queue process now: its replacement finds on disk what it delivered.
    const pid = await queuePid(c);
    process.kill(pid, 'SIGKILL');
    await queuePid(c, pid);
    const marker = await send(c, ['marker@example.test'], 'marker');
    await c.waitFor('the replacement delivers', () => copies('marker') === 1, 60_000);
    assert.ok(marker);
    assert.equal(copies('second'), 1, 'now@ delivered once');
  } finally {
    faults.disarm('fdatasync-hang');
    await c.stop();
    await sink.close();
  }
});
