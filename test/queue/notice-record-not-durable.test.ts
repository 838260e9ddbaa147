// A record whose folder sync fails: the state file is renamed into place, but its folder's fsync gets EIO, so the
// record may not survive a power loss (#record keeps it in memory and writes it again). The notices of that attempt
// went out (and a withdrawn one was removed, its done mark synced) at once all the same: the state file on disk counted
// the attempt. After a power loss the attempt ran again with neither its record nor its withdrawn notice: it spooled a
// new notice under the withdrawn one's id (slot 0 free), which that id's synced done mark hid at the next start, and the
// notice already sent named the recipient again. A real `postern serve` (supervisor, one worker, the queue process) and
// a real next hop on loopback:
// - run 1 of attempt 1: `flaky` and `second` refused (550), `third` deferred: slot 0 names both; the queue process is
//   killed at the attempt's record (the rename of the state file);
// - run 2: `flaky` refused, `second` accepted, `third` deferred: slot 0 withdrawn, slot 1 names `flaky`; the record's
//   state file is renamed in, and the fsync of its folder fails with EIO;
// - run 3 (the retry, a retry delay later): `third` accepted, the message finished and removed.
// No notice goes out before a record of its attempt that succeeded: the bounce naming `flaky` comes after run 3, once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crashWalk, startWalkedServer } from '../helpers/crash-walk.ts';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, spooled } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

const walk = crashWalk();
const SENDER = 'a@example.test';

const naming = (bounces: string[], who: string): string[] => bounces.filter((b) => /Action: failed/.test(b) && new RegExp(`Final-Recipient: rfc822; ${who}@example\\.test`).test(b));

test('a record whose folder sync fails: its notices wait for a record that succeeds', { timeout: 300_000 }, async (t) => {
  let secondRuns = 0;
  let thirdRuns = 0;
  const bounceSeenAtThirdRun: number[] = [];
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage === 'mail' && address === '') bounceSeenAtThirdRun.push(thirdRuns);
      if (stage !== 'rcpt') return null;
      if (address === 'flaky@example.test') return { code: 550, text: '5.1.1 No such user' };
      if (address === 'second@example.test') {
        if (++secondRuns === 1) return { code: 550, text: '5.1.1 No such user (for now)' };
        // Run 2 (run 1's kill taken): the sync of its record's folder (the worker spool's queue folder) fails.
        if (secondRuns === 2) walk.arm(1, 'eio', { call: 'fsync', pathEnd: 'worker-0/queue' });
        return null;
      }
      if (address === 'third@example.test' && ++thirdRuns <= 2) return { code: 451, text: '4.2.0 Try again later' };
      return null;
    },
  });
  // The retry of the failed record a whole second later: a notice let go at the failed record reaches the sink first.
  const { c, remove } = await startWalkedServer(walk, deliveryToSink(sink.port, { retrySchedule: [1], scanIntervalMs: 200 }));
  try {
    walk.arm(1, 'kill', { call: 'rename', pathEnd: '.state' });
    await submitMessage(c.port('in'), SENDER, ['flaky@example.test', 'second@example.test', 'third@example.test']);
    const delivered = (to: string): number => sink.messages.filter((m) => m.from !== '' && m.to.includes(to)).length;
    const bounces = (): string[] => sink.messages.filter((m) => m.from === '').map((m) => m.data.toString('latin1'));
    await c.waitFor('second and third delivered, a bounce, and the spool empty', async () =>
      secondRuns >= 2 && walk.taken() && delivered('second@example.test') >= 1 && delivered('third@example.test') >= 1 && bounces().length >= 1 && (await spooled(c)).size === 0, 120_000)
      .catch((err: unknown) => {
        t.diagnostic(`runs of second: ${secondRuns}, of third: ${thirdRuns}; taken: ${walk.taken()}; bounces: ${bounces().length}; trace: ${walk.trace().map((p) => `${p.call} ${p.path}`).join('; ')}`);
        throw err;
      });
    walk.disarm();
    const flaky = naming(bounces(), 'flaky').length;
    t.diagnostic(`runs of second: ${secondRuns}, of third: ${thirdRuns}; bounces came at runs of third: ${bounceSeenAtThirdRun.join(', ')}; ${flaky} naming flaky`);
    t.diagnostic(c.logs.filter((l) => typeof l.msg === 'string' && /notification|waits for|cannot record|removed/.test(l.msg)).map((l) => String(l.msg)).join('\n'));
    // Which call took the EIO, and whether it was the record's: said before the assertions, for a failure to explain
    // itself. (Failed once in a fresh-clone run with the bounce at run 2 of third: a scan had tried the notice between the
    // state file's rename and its folder's failed sync, when the disk already counted the attempt; made certain by
    // notice-while-record-syncs.test.ts.)
    const hit = walk.hit();
    t.diagnostic(`EIO taken by: ${hit ? `${hit.call} ${hit.path} (pid ${hit.pid})` : 'none'}; the record failed: ${c.logs.some((l) => /cannot record the outcome of a delivery attempt/.test(String(l.msg)))}`);
    assert.ok(bounceSeenAtThirdRun.every((n) => n >= 3), `no bounce before the attempt's record succeeded (run 3): ${bounceSeenAtThirdRun.join(', ')}`);
    assert.equal(flaky, 1, 'one bounce names flaky');
    assert.equal(naming(bounces(), 'second').length, 0, 'no bounce names second');
  } finally {
    walk.disarm();
    await c.stop();
    await sink.close();
    await remove();
  }
});
