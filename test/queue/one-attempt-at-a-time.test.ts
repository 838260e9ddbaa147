// At most one delivery attempt per message at a time, each reading what the one before it recorded, and nothing
// written for a message after its removal: the queue runner hears of a message from its scans, from the process
// that spooled it (notify: a worker's announcement, which reaches the queue process up to a batch later), and from
// its own retry timers, in any order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { until } from '../helpers/wait.ts';
import { runCli } from '../helpers/cli.ts';
import { diskFaults, isStopped } from '../helpers/disk-faults.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';


test('a message\'s announcement arriving after its first attempt (the scan found it first): the next attempt reads that attempt\'s state, the delivered recipient is not sent to again', async () => {
  let refuseLater = true;
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && refuseLater && address.startsWith('later@') ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const s = await startDeliveryServer({
    config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [0.5] }) }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    // Accepted from the first attempt's end on, whatever comes next: the announcement below, or (on a machine that
    // kept this test from it for 0.5 s) the retry, which with later@ still refused made the removal attempt 3.
    s.queue!.onAttempt((e) => { if (e.attempt === 1) refuseLater = false; });
    const id = await s.send('a@origin.test', ['ok@dest.test', 'later@dest.test']);
    const first = await s.nextAttempt((e) => e.id === id, { past: true });
    assert.equal(first.removed, false, 'later@ deferred');
    await until('the first attempt over', () => s.queue!.activeCount === 0);
    // What child.ts does with a worker's 'spooled' message, here after the attempt the scan started (in a server a
    // scan may run before the worker's batch of announcements is sent, ANNOUNCE_BATCH_MS).
    s.queue!.notify(id);
    const last = await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
    const copies = (rcpt: string): number => sink.messages.filter((m) => m.to.includes(rcpt)).length;
    assert.equal(copies('ok@dest.test'), 1, 'the recipient delivered at the first attempt: once');
    assert.equal(copies('later@dest.test'), 1);
    assert.equal(last.attempt, 2, 'the second attempt, counted on from the first');
    const queueDir = join(s.dir, 'data', 'spool', 'queue');
    await until('nothing left in the queue folder (the state file removed with the message)', () => readdirSync(queueDir).length === 0);
  } finally {
    await s.stop();
    await sink.close();
  }
});

test('a message that comes due again while its attempt is still under way: not attempted twice at once, and attempted once that attempt ends (not at the next scan)', async () => {
  let refusals = 0;
  const sink = await startSink({ decide: (stage) => (stage === 'rcpt' && refusals++ === 0 ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const s = await startDeliveryServer({
    // Retried 1 ms after a deferral; scans far apart, so only the runner's own schedule brings the retry.
    config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [0.001], scanIntervalMs: 600_000 }) }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    let concurrent = 0;
    s.queue!.onAttempt((e) => {
      if (e.attempt !== 1 || e.removed) return;
      // The deferral is recorded, the retry scheduled, the attempt not over yet. Once the retry is due (within 1 ms
      // of its scheduling), something wakes the runner: here the message's own announcement, come late.
      for (const start = performance.now(); performance.now() - start < 3;); // the retry is due by now
      s.queue!.notify(e.id);
      concurrent = s.queue!.activeCount;
    });
    const id = await s.send('a@origin.test', ['b@dest.test']);
    const last = await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
    assert.equal(last.attempt, 2);
    assert.equal(concurrent, 1, 'no second attempt started beside the first');
    assert.equal(sink.messages.length, 1);
  } finally {
    await s.stop();
    await sink.close();
  }
});

test('postern queue retry racing an attempt: the retry does not put back the state it read, undoing the attempt\'s record (the recipient it delivered sent to again)', async () => {
  let mode: 'defer' | 'later' | 'accept' = 'defer';
  const sink = await startSink({
    decide: (stage, address) => (stage === 'rcpt' && (mode === 'defer' || (mode === 'later' && address.startsWith('later@'))) ? { code: 451, text: '4.2.0 Try again later' } : null),
  });
  const s = await startDeliveryServer({
    config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600], scanIntervalMs: 200 }) }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  const faults = diskFaults();
  let cliPid = 0;
  try {
    const id = await s.send('a@origin.test', ['ok@dest.test', 'later@dest.test']);
    await s.nextAttempt((e) => e.id === id, { past: true });
    // `queue retry` reads the state of that attempt and stops as it starts writing (its first temporary file).
    faults.armFor('open-stop', '.tmp');
    const retrying = runCli(['queue', 'retry', id, '-c', join(s.dir, 'postern.yaml')], { env: faults.env, onSpawn: (pid) => { cliPid = pid; } });
    try {
      await until('the retry stopped as it writes', () => faults.taken('open-stop') && cliPid > 0 && isStopped(cliPid));
      // Meanwhile an attempt (`postern queue retry` run a moment before, say) delivers to ok@ and records that.
      mode = 'later';
      await runCli(['queue', 'retry', id, '-c', join(s.dir, 'postern.yaml')]);
      await s.nextAttempt((e) => e.id === id && e.attempt === 2, { past: true });
      // Before the stopped retry goes on: the attempt it asks for may start before this test hears that it ended.
      mode = 'accept';
    } finally {
      if (cliPid) process.kill(cliPid, 'SIGCONT');
    }
    const retried = await retrying;
    assert.equal(retried.code, 0, retried.stderr);
    await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
    const copies = (rcpt: string): number => sink.messages.filter((m) => m.to.includes(rcpt)).length;
    assert.equal(copies('ok@dest.test'), 1, 'the recipient delivered at the second attempt: once');
    assert.equal(copies('later@dest.test'), 1);
  } finally {
    await s.stop();
    await sink.close();
  }
});
