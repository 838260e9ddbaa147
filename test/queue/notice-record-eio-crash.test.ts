// A notice id reused after a failed record and a crash (a reviewer's report): a run of an attempt withdraws the notice
// an earlier crashed run spooled (slot 0) and spools its replacement (slot 1), and its record fails (EIO at the
// rename of the message's state file). Were the withdrawn slot 0 removed then (a done mark in the queue process's
// journal) and the process killed before the record is written, the next run of that attempt would find slot 0 free
// and spool a new notice under the same id: the old done mark hides it at a start, and slot 1 goes out unfound beside
// it. A real `postern serve` (supervisor, one worker, the queue process) and a real next hop on loopback:
// - run 1 of attempt 1: `flaky` and `second` refused (550), `third` deferred: slot 0 names both; the queue process is
//   killed at the attempt's record (the rename of the state file);
// - run 2: `flaky` refused, `second` accepted, `third` deferred: slot 0 withdrawn, slot 1 names `flaky`; the record's
//   rename fails with EIO (kept in memory, retried after the first retry delay);
// - run 3 (the retry, from memory): `third` accepted; the queue process is killed at its record (the message's done
//   mark), so no record of attempt 1 is on disk;
// - after the restart attempt 1 runs again from the spool file: `flaky` refused, the others accepted.
// The sender gets exactly one bounce naming `flaky` and none naming `second`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crashWalk, startWalkedServer } from '../helpers/crash-walk.ts';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, spooled } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

const walk = crashWalk();
const SENDER = 'a@example.test';

const naming = (bounces: string[], who: string): string[] => bounces.filter((b) => /Action: failed/.test(b) && new RegExp(`Final-Recipient: rfc822; ${who}@example\\.test`).test(b));

test('a record that fails with EIO, then a crash before it is written: one bounce for the refused recipient, none for the accepted one', { timeout: 300_000 }, async (t) => {
  let id = '';
  let secondRuns = 0;
  let thirdRuns = 0;
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage !== 'rcpt') return null;
      if (address === 'flaky@example.test') return { code: 550, text: '5.1.1 No such user' };
      if (address === 'second@example.test') {
        if (++secondRuns === 1) return { code: 550, text: '5.1.1 No such user (for now)' };
        // Run 2 (run 1's kill taken): its record's rename fails.
        if (secondRuns === 2) walk.arm(1, 'eio', { call: 'rename', pathEnd: `${id}.state` });
        return null;
      }
      if (address === 'third@example.test') {
        if (++thirdRuns <= 2) return { code: 451, text: '4.2.0 Try again later' };
        // Run 3, the retry of the unrecorded attempt: killed at its record, the message's done mark.
        if (thirdRuns === 3) walk.arm(1, 'kill', { call: 'write', pathEnd: '.done' });
      }
      return null;
    },
  });
  const { c, remove } = await startWalkedServer(walk, deliveryToSink(sink.port, { retrySchedule: [0.2], scanIntervalMs: 200 }));
  try {
    walk.arm(1, 'kill', { call: 'rename', pathEnd: '.state' });
    id = await submitMessage(c.port('in'), SENDER, ['flaky@example.test', 'second@example.test', 'third@example.test']);
    const delivered = (to: string): number => sink.messages.filter((m) => m.from !== '' && m.to.includes(to)).length;
    const bounces = (): string[] => sink.messages.filter((m) => m.from === '').map((m) => m.data.toString('latin1'));
    await c.waitFor('second and third delivered, a bounce, and the spool empty', async () =>
      thirdRuns >= 3 && walk.taken() && delivered('second@example.test') >= 1 && delivered('third@example.test') >= 1 && bounces().length >= 1 && (await spooled(c)).size === 0, 120_000);
    walk.disarm();
    // A second start: a done mark of a reused id would hide a notice now.
    const flaky = naming(bounces(), 'flaky').length;
    const second = naming(bounces(), 'second').length;
    t.diagnostic(`runs of second: ${secondRuns}, of third: ${thirdRuns}; ${flaky} bounce(s) naming flaky, ${second} naming second`);
    t.diagnostic(c.logs.filter((l) => typeof l.msg === 'string' && /notification|waits for|cannot record|removed/.test(l.msg)).map((l) => String(l.msg)).join('\n'));
    assert.equal(flaky, 1, 'one bounce names flaky');
    assert.equal(second, 0, 'no bounce names second');
  } finally {
    walk.disarm();
    await c.stop();
    await sink.close();
    await remove();
  }
});
