// A notice found by a scan while its attempt's record is still being made durable. The record spools the notice first,
// then writes the message's state file: renamed into place, then its folder synced. A scan (every scanIntervalMs) lists
// the new notice and attempts it at once; that attempt asked the disk whether the attempt was recorded, and a state file
// renamed in but whose folder sync had not returned (or was about to fail with EIO) already counted the attempt: the
// bounce went out before the record was durable. After a power loss then, the attempt ran again and spooled its notice
// again (a second bounce), or, its record failed, the notice left while the runner still kept the outcome in memory
// (seen in CI as notice-record-not-durable's "bounce before the attempt's record succeeded").
// Made certain here: the sync of the record's folder (the worker spool's queue folder) hangs (test/helpers/disk-faults.c
// fsync-hang, preloaded into a real `postern serve`) while the scan finds the notice; the next hop is real.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startCluster, ONE_WORKER, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';
import { diskFaults, type DiskFaults } from '../helpers/disk-faults.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

/**
 * A server whose next hop refuses `flaky` (550) and defers `later`; the sync of the folder of the first attempt's state
 * file hangs until the test disarms `fsync-hang`. A deadline the hang stays within: the record neither fails nor
 * succeeds meanwhile.
 */
async function hungRecord(retrySeconds: number, body: (c: ClusterProcess, sink: Sink, faults: DiskFaults) => Promise<void>): Promise<void> {
  const faults = diskFaults();
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage !== 'rcpt') return null;
      if (address === 'flaky@example.test') {
        // The attempt's record comes after this: the sync of its state file's folder waits until the test lets it go.
        faults.armFor('fsync-hang', 'worker-0/queue');
        return { code: 550, text: '5.1.1 No such user' };
      }
      if (address === 'later@example.test') return { code: 451, text: '4.2.0 Try again later' };
      return null;
    },
  });
  const c = await startCluster({ env: faults.env, config: `${ONE_WORKER}spool: { syncDeadlineMs: 300000 }\n${deliveryToSink(sink.port, { retrySchedule: [retrySeconds], scanIntervalMs: 100 })}` });
  try {
    await submitMessage(c.port('in'), 'a@example.test', ['flaky@example.test', 'later@example.test']);
    await c.waitFor('the record\'s folder sync hangs', () => faults.hungCalls('fsync-hang') >= 1, 120_000);
    await body(c, sink, faults);
    faults.disarm('fsync-hang');
    const bounces = (): string[] => sink.messages.filter((m) => m.from === '').map((m) => m.data.toString('latin1'));
    await c.waitFor('the bounce, once the record is durable', () => bounces().length >= 1, 120_000);
    assert.equal(bounces().length, 1, 'one bounce');
    assert.match(bounces()[0]!, /Final-Recipient: rfc822; flaky@example\.test/);
    assert.doesNotMatch(bounces()[0]!, /Final-Recipient: rfc822; later@example\.test/);
  } finally {
    faults.disarm('fsync-hang');
    await c.stop();
    await sink.close();
  }
}

const heldBack = (c: ClusterProcess): number => c.logs.filter((l) => /waits for the outcome of \S+'s attempt 1 to be recorded/.test(String(l.msg))).length;
const nullSenders = (sink: Sink): number => sink.attempts.filter((a) => a.from === '').length;

test('a notice waits while its attempt\'s record is still being synced: no bounce before the record is durable', { timeout: 240_000 }, async (t) => {
  // A retry delay of a second: a notice held back is tried again (and sent, if nothing holds it) while the sync hangs.
  await hungRecord(1, async (c, sink) => {
    // The state file is in place, its folder not synced: every try of the notice from now on must be held back. Either
    // the notice goes out (the defect) or a try of it that read the spool after the hang began is held back (two lines
    // more: the first may be of a try that read it before the rename and said so after).
    const before = heldBack(c);
    await c.waitFor('a try of the notice after the hang began', () => nullSenders(sink) > 0 || heldBack(c) >= before + 2, 120_000);
    t.diagnostic(`notice tries held back: ${before} before the hang was seen, ${heldBack(c)} now; bounce attempts: ${nullSenders(sink)}`);
    assert.equal(nullSenders(sink), 0, 'no bounce while the record\'s folder sync has not returned');
  });
});

test('a notice held back while its attempt\'s record was being synced goes out once the record is durable, not a retry delay later', { timeout: 240_000 }, async () => {
  // An hour's retry delay: the notice held back (found by a scan during the hang) would wait it out.
  await hungRecord(3600, async (c) => {
    await c.waitFor('the notice found and held back', () => heldBack(c) >= 1, 120_000);
  });
});
