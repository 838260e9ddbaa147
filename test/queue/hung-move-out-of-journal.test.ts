/**
 * A deferred message's move out of the journal (at its second deferral, spool.ts moveOutOfJournal) on a disk that stops
 * answering: the move's durable done mark (an fsync of the journal's done list) never returned, and the attempt waited
 * for it for as long as the disk hung, holding its place among the attempts in flight (twice delivery.concurrency) and
 * a thread of libuv's pool, unseen (no line, /readyz 200, the gauge 0), as state writes and removals did before they
 * were bounded. Two such moves with `concurrency: 1` and the queue process attempted nothing more: mail the next hop
 * would take stayed queued. Now the move is bounded by spool.syncDeadlineMs as they are: past it the message stays in
 * the journal (moved at a later deferral), delivery goes on, and /readyz says the queue process cannot confirm writes.
 * The fault is injected at the C library (test/helpers/disk-faults.c, fsync-hang on the journal's done list,
 * preloaded); the server and the next hop are real.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { greeted, startCluster, ONE_WORKER, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';

/** One message per recipient, on one connection; their queue ids. */
async function send(c: ClusterProcess, recipients: string[]): Promise<string[]> {
  const client = await greeted(c);
  const ids: string[] = [];
  for (const to of recipients) {
    assert.equal((await client.command('MAIL FROM:<a@example.test>')).code, 250);
    assert.equal((await client.command(`RCPT TO:<${to}>`)).code, 250);
    assert.equal((await client.command('DATA')).code, 354);
    client.write(`Subject: to ${to}\r\n\r\nx\r\n.`);
    const r = await client.read(60_000);
    assert.equal(r.code, 250, r.text);
    ids.push(/queued as (\S+)/.exec(r.text)![1]!);
  }
  await client.quit();
  return ids;
}

test('moves out of the journal that hang: bounded, delivery goes on, /readyz says so', { timeout: 180_000 }, async () => {
  const faults = diskFaults();
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && address.startsWith('later') ? { code: 451, text: '4.2.0 Try again later' } : null) });
  // One transaction at a time: two attempts in flight at most.
  const c = await startCluster({ env: faults.env, config: `${ONE_WORKER}spool: { syncDeadlineMs: 5000 }\nadmin: { listen: "127.0.0.1:{PORT:admin}" }\n${deliveryToSink(sink.port, { retrySchedule: [2] })}  concurrency: 1\n` });
  const admin = c.port('admin');
  const subjects = (to: string): number => sink.messages.filter((m) => m.data.toString().includes(`Subject: to ${to}`)).length;
  try {
    const later = await send(c, ['later0@example.test', 'later1@example.test', 'later2@example.test']);
    const stateOf = (id: string): string => join(c.dataDir, 'spool', 'worker-0', 'queue', `${id}.state`);
    await c.waitFor('each deferred once (a state file each)', () => later.every((id) => existsSync(stateOf(id))), 60_000);
    faults.armFor('fsync-hang', '.done'); // a journal segment's done list: the move's done mark (journal.ts markDoneDurably)
    await c.waitFor('a move hangs', () => faults.hungCalls('fsync-hang') >= 1, 60_000);
    await c.waitFor('/readyz 503 naming the queue process', async () => {
      const r = await fetch(`http://127.0.0.1:${admin}/readyz`, { signal: AbortSignal.timeout(90_000) });
      return r.status === 503 && /the queue process/.test(await r.text());
    }, 60_000);
    await send(c, ['now@example.test']);
    await c.waitFor('a new message is still delivered', () => subjects('now@') === 1, 60_000);

    faults.disarm('fsync-hang');
    await c.waitFor('/readyz 200 once the disk answers', async () => (await fetch(`http://127.0.0.1:${admin}/readyz`, { signal: AbortSignal.timeout(90_000) })).status === 200, 60_000);
  } finally {
    faults.disarm('fsync-hang');
    await c.stop();
    await sink.close();
  }
});
