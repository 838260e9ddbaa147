// A notice spooled by an attempt whose outcome a crash kept from being recorded, and an attempt run again that
// ends otherwise. A real `postern serve` (supervisor, one worker, the queue process) delivers one message to two
// recipients through a real next hop on loopback: the first attempt has `flaky` refused for good (550) and `later`
// deferred, so a bounce naming `flaky` is spooled; the queue process is killed (the crash walk, at the rename of the
// state file that records that attempt) before the attempt's outcome is on disk. Restarted, it runs the attempt
// again, and now the next hop accepts `flaky`. The sender must not then be told `flaky` failed: the leftover notice
// went out all the same once the attempt was recorded (a bounce for a delivered recipient).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crashWalk, startWalkedServer } from '../helpers/crash-walk.ts';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, spooled } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

const walk = crashWalk();
const SENDER = 'a@example.test';

test('a bounce spooled before a crash is not sent for a recipient that the attempt, run again, delivered', { timeout: 180_000 }, async () => {
  let flakyRefusals = 1;
  let deferrals = 2;
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage !== 'rcpt') return null;
      if (address === 'flaky@example.test' && flakyRefusals > 0) { flakyRefusals--; return { code: 550, text: '5.1.1 No such user (for now)' }; }
      if (address === 'later@example.test' && deferrals > 0) { deferrals--; return { code: 451, text: '4.2.0 Try again later' }; }
      return null;
    },
  });
  const { c, remove } = await startWalkedServer(walk, deliveryToSink(sink.port, { retrySchedule: [0.2], scanIntervalMs: 200 }));
  try {
    walk.arm(1, 'kill', { call: 'rename', pathEnd: '.state' });
    await submitMessage(c.port('in'), SENDER, ['flaky@example.test', 'later@example.test']);
    const delivered = (to: string): number => sink.messages.filter((m) => m.from !== '' && m.to.includes(to)).length;
    await c.waitFor('both recipients delivered and the spool empty', async () =>
      delivered('flaky@example.test') >= 1 && delivered('later@example.test') >= 1 && (await spooled(c)).size === 0);
    assert.ok(walk.taken(), 'the queue process was killed before the first attempt was recorded');
    assert.equal(flakyRefusals, 0, 'flaky was refused once (the bounce was spooled)');
    const bounces = sink.messages.filter((m) => m.from === '');
    const naming = bounces.filter((m) => /Final-Recipient: rfc822; flaky@example\.test/.test(m.data.toString('latin1')));
    assert.deepEqual(naming.map((m) => m.data.toString('latin1').slice(0, 2000)), [],
      'no bounce names flaky@example.test, which the next hop accepted');
  } finally {
    walk.disarm();
    await c.stop();
    await sink.close();
    await remove();
  }
});
