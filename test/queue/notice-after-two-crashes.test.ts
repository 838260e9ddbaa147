// Two crashes of one attempt, each after its notices were spooled and before its outcome was recorded. A real
// `postern serve` (supervisor, one worker, the queue process) delivers one message to three recipients through a real
// next hop on loopback (a third recipient, deferred in the first two runs, keeps the attempt from finishing there,
// so its state file is written). The first run of attempt 1 has `flaky` refused (550) and `second` deferred: a bounce naming
// `flaky` is spooled, and the queue process is killed at the rename of the state file that records the attempt. The
// second run has both refused: a bounce for `second` is spooled beside the first, and the queue process is killed at
// the same point again. The third run has `flaky` refused and `second` accepted. The sender must get one bounce, for
// `flaky`, and none for `second`: the notice the second run spooled had a random id that the third run did not look
// for, so it was neither found nor withdrawn and went out once the attempt was recorded (a bounce for a delivered
// recipient).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crashWalk, startWalkedServer } from '../helpers/crash-walk.ts';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, spooled } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

const walk = crashWalk();
const SENDER = 'a@example.test';
const KILL_AT_RECORD = { call: 'rename', pathEnd: '.state' };

test('a notice spooled by the second of two crashed runs of an attempt is withdrawn when the third run delivers its recipient', { timeout: 180_000 }, async () => {
  let flakyRuns = 0;
  let secondRuns = 0;
  let thirdRuns = 0;
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage !== 'rcpt') return null;
      if (address === 'flaky@example.test') {
        flakyRuns++;
        // The second run has begun (the first one's kill is taken): its record is killed too.
        if (flakyRuns === 2) walk.arm(1, 'kill', KILL_AT_RECORD);
        return { code: 550, text: '5.1.1 No such user' };
      }
      if (address === 'second@example.test') {
        secondRuns++;
        if (secondRuns === 1) return { code: 451, text: '4.2.0 Try again later' };
        if (secondRuns === 2) return { code: 550, text: '5.1.1 No such user (for now)' };
      }
      // Deferred in the first two runs: the attempt does not finish there, and its state file is written (and killed).
      if (address === 'third@example.test' && thirdRuns++ < 2) return { code: 451, text: '4.2.0 Try again later' };
      return null;
    },
  });
  const { c, remove } = await startWalkedServer(walk, deliveryToSink(sink.port, { retrySchedule: [0.2], scanIntervalMs: 200 }));
  try {
    walk.arm(1, 'kill', KILL_AT_RECORD);
    await submitMessage(c.port('in'), SENDER, ['flaky@example.test', 'second@example.test', 'third@example.test']);
    const delivered = (to: string): number => sink.messages.filter((m) => m.from !== '' && m.to.includes(to)).length;
    const bounces = (): string[] => sink.messages.filter((m) => m.from === '').map((m) => m.data.toString('latin1'));
    await c.waitFor('second and third delivered, a bounce for flaky, and the spool empty', async () =>
      delivered('second@example.test') >= 1 && delivered('third@example.test') >= 1 && bounces().length >= 1 && (await spooled(c)).size === 0);
    assert.equal(flakyRuns, 3, 'the attempt ran three times (two crashes)');
    assert.equal(secondRuns, 3);
    assert.ok(walk.taken(), 'the second kill was taken too');
    const naming = (who: string): string[] => bounces().filter((b) => new RegExp(`Final-Recipient: rfc822; ${who}@example\\.test`).test(b));
    assert.deepEqual(naming('second').map((b) => b.slice(0, 2000)), [], 'no bounce names second@example.test, which the next hop accepted');
    assert.equal(naming('flaky').length, 1, 'one bounce names flaky@example.test');
  } finally {
    walk.disarm();
    await c.stop();
    await sink.close();
    await remove();
  }
});
