/**
 * The removal of a delivered message on a disk that stops answering. A message deferred once has a state file, so its
 * removal is made durable first (its journal done line fsynced, engine/spool/spool.ts remove()); that fsync never
 * returned, and the attempt waited for it for as long as the disk hung, unseen (no error line, /readyz 200), holding
 * its place among the attempts in flight (twice `delivery.concurrency`) and a thread of libuv's pool. Once as many
 * removals hung as there are places, the queue process attempted nothing more: mail the next hop would take stayed
 * queued, unseen. Now a removal is bounded by spool.syncDeadlineMs as a state write is: past it the outcome is kept in
 * memory (no recipient is sent to twice), the next removals are refused at once, delivery goes on, and once the disk
 * answers every delivered message leaves the spool. The fault is injected at the C library
 * (test/helpers/disk-faults.c, fsync-hang on the journal's done list, preloaded); the server and the next hop are real.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { greeted, spooled, startCluster, ONE_WORKER, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';
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

test('removals of delivered messages that hang: logged, the gauge says so, delivery goes on; the disk back, each removed, each delivered once', { timeout: 180_000 }, async (t) => {
  const faults = diskFaults();
  let refuseLater = true;
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && refuseLater && address.startsWith('later') ? { code: 451, text: '4.2.0 Try again later' } : null) });
  // One transaction at a time: two attempts in flight at most, so two hung removals were enough to stop delivery.
  const c = await startCluster({ env: faults.env, config: `${ONE_WORKER}spool: { syncDeadlineMs: 5000 }\nadmin: { listen: "127.0.0.1:{PORT:admin}" }\n${deliveryToSink(sink.port, { retrySchedule: [2] })}  concurrency: 1\n` });
  const admin = c.port('admin');
  const subjects = (to: string): number => sink.messages.filter((m) => m.data.toString().includes(`Subject: to ${to}`)).length;
  try {
    const later = await send(c, ['later0@example.test', 'later1@example.test', 'later2@example.test']);
    const stateOf = (id: string): string => join(c.dataDir, 'spool', 'worker-0', 'queue', `${id}.state`);
    await c.waitFor('each deferred once (a state file each)', () => later.every((id) => existsSync(stateOf(id))), 60_000);
    faults.armFor('fsync-hang', '.done'); // a journal segment's done list (journal.ts markDoneDurably)
    refuseLater = false;
    await c.waitFor('a removal hangs', () => faults.hungCalls('fsync-hang') >= 1, 60_000);
    await c.waitFor('the removal\'s failure logged at error', () => c.logs.some((l) => later.includes(String(l.id)) && l.level === 50 && /has not confirmed the removal of message/.test(JSON.stringify(l))), 30_000);
    const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`, { signal: AbortSignal.timeout(90_000) })).text();
    assert.match(metrics, /^postern_spool_writes_unconfirmed(\{[^}]*\})? 1$/m);

    // Those in flight before the deadline wait (two places), and no more: the removals tried again are refused at once.
    const hung = faults.hungCalls('fsync-hang');
    assert.ok(hung <= 2, `${hung} removals wait on the disk`);
    const refusals = (): number => c.logs.filter((l) => l.level === 50 && /has not confirmed an earlier write \(before the removal of message/.test(JSON.stringify(l))).length;
    await c.waitFor('removals tried again and refused at once', () => refusals() >= 4, 60_000);
    await send(c, ['now@example.test']);
    await c.waitFor('a new message is still delivered', () => subjects('now@') === 1, 60_000);
    t.diagnostic(`fsyncs waiting on the disk: ${faults.hungCalls('fsync-hang')}`);
    assert.equal(faults.hungCalls('fsync-hang'), hung, 'no removal tried again waits on the disk');

    faults.disarm('fsync-hang');
    await c.waitFor('every delivered message removed', async () => (await spooled(c)).size === 0, 60_000);
    for (const to of ['later0@', 'later1@', 'later2@', 'now@']) assert.equal(subjects(to), 1, `${to} delivered once`);
  } finally {
    faults.disarm('fsync-hang');
    await c.stop();
    await sink.close();
  }
});
