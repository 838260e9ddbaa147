/**
 * Whether a message is still queued, asked of a failing disk. The queue runner asks at each attempt's record: before
 * bouncing (a message deleted during its attempt by `postern queue delete` is not bounced) and after writing a deferred
 * message's state (one deleted meanwhile leaves no orphan state). A message in a file of its own (a large one, or one
 * moved out of the journal after its deferrals) is looked for with a stat(), and any error of it was taken for "not
 * there": a stat failing with EIO (a bad block, a disk in trouble) made a recipient the next hop refused for good go
 * unbounced ("deleted during its attempt"), and made a deferred message, recipients still pending, removed from the
 * spool, unlogged. Acknowledged mail lost on one failed stat. Only ENOENT is "not there": another error is the
 * disk's, and the record is tried again (kept in memory meanwhile, as for a failed write). The fault is injected at the
 * C library (test/helpers/disk-faults.c, stat-eio on the message's file, preloaded); the server and the next hop are
 * real.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { spooled, startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { runCli } from '../helpers/cli.ts';

/** Over the journal's largest record (1 MiB): a file of its own in queue/, looked for with a stat(). */
const LARGE = `Subject: large\r\n\r\n${'0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\r\n'.repeat(16_000)}`;

test('a stat of a queued message that fails with EIO is no deletion: the refused recipient is bounced, the deferred one stays queued and is delivered', { timeout: 180_000 }, async () => {
  const faults = diskFaults();
  /** `<id>.msg`: the fault is armed as the next hop answers the RCPT named, so that the record's look takes it. */
  const armAt = new Map<string, string>();
  let refuseBad = false;
  let acceptLater = false;
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage !== 'rcpt') return null;
      const arm = armAt.get(address);
      if (arm) { armAt.delete(address); faults.armFor('stat-eio', arm); }
      if (address === 'bad@example.test') return refuseBad ? { code: 550, text: '5.1.1 No such user' } : { code: 451, text: '4.2.0 Try again later' };
      if (address === 'later@example.test' && !acceptLater) return { code: 451, text: '4.2.0 Try again later' };
      return null;
    },
  });
  const c = await startCluster({ env: faults.env, config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [1] })}` });
  try {
    const bounces = (): number => sink.messages.filter((m) => m.from === '' && m.to.includes('a@example.test')).length;
    const later = (): number => sink.messages.filter((m) => m.from !== '' && m.to.includes('later@example.test')).length;
    const attempts = (id: string): number => Math.max(0, ...c.logs.filter((l) => l.id === id && l.status === 'deferred').map((l) => Number(/attempt=(\d+)/.exec(String(l.msg))?.[1] ?? 0)));

    const id = await submitMessage(c.port('in'), 'a@example.test', ['bad@example.test', 'later@example.test'], LARGE);
    assert.ok(existsSync(join(c.dataDir, 'spool', 'worker-0', 'queue', `${id}.msg`)), 'the message has a file of its own');
    await c.waitFor('attempt 1: both deferred', () => attempts(id) >= 1, 60_000);

    // The next attempt: bad@ refused for good, later@ deferred; the look before the bounce fails.
    armAt.set('bad@example.test', `${id}.msg`);
    refuseBad = true;
    await c.waitFor('the fault taken', () => faults.taken('stat-eio'), 60_000);
    await c.waitFor('the bounce for bad@ delivered to the sender', () => bounces() >= 1, 60_000);
    assert.equal(c.logs.filter((l) => l.id === id && /deleted during its attempt/.test(String(l.msg))).length, 0, 'not taken for deleted');

    // A later attempt: later@ deferred again; the look after the state's write fails.
    const before = attempts(id);
    armAt.set('later@example.test', `${id}.msg`);
    await c.waitFor('the fault taken again', () => faults.taken('stat-eio'), 60_000);
    await c.waitFor('that attempt over', () => attempts(id) > before, 60_000);
    assert.ok((await spooled(c)).has(id), 'the deferred message is still queued');
    acceptLater = true;
    await c.waitFor('later@ delivered, the spool empty', async () => later() === 1 && (await spooled(c)).size === 0, 60_000);
    assert.equal(bounces(), 1, 'one bounce');
    assert.equal(later(), 1, 'later@ delivered once');
  } finally {
    await c.stop();
    await sink.close();
  }
});

test('a held message whose hold the disk fails to find (EIO) is not delivered: the attempt waits and finds the hold', { timeout: 180_000 }, async () => {
  const faults = diskFaults();
  let deferAll = true;
  const sink = await startSink({ decide: (stage) => (stage === 'rcpt' && deferAll ? { code: 451, text: '4.2.0 Try again later' } : null) });
  // Scans far apart: the hold is seen by the attempt's own look (the scans list the holds too).
  const c = await startCluster({ env: faults.env, config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [3], scanIntervalMs: 600_000 })}` });
  try {
    const id = await submitMessage(c.port('in'), 'a@example.test', ['b@example.test']);
    await c.waitFor('the first attempt deferred', () => c.logs.some((l) => l.id === id && l.status === 'deferred'), 60_000);
    const held = await runCli(['queue', 'hold', id, '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(held.code, 0, held.stderr);
    faults.armFor('stat-eio', `${id}.held`);
    deferAll = false;
    await c.waitFor('the fault taken at the retry', () => faults.taken('stat-eio'), 60_000);
    await c.waitFor('the hold found at a later look (or the message delivered)', () => sink.messages.length > 0 || c.logs.some((l) => l.id === id && l.held === true), 60_000);
    assert.equal(sink.messages.length, 0, 'the held message was not delivered');
    assert.ok((await spooled(c)).has(id), 'still queued');
  } finally {
    await c.stop();
    await sink.close();
  }
});
