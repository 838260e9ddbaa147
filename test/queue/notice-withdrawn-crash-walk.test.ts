// A crash at every call between an attempt's decision to bounce and its record, in a run of that attempt that
// withdraws the notice an earlier crashed run spooled and spools its replacement. A real `postern serve` (supervisor,
// one worker, the queue process) delivers one message to three recipients through a real next hop on loopback:
// - run 1 of attempt 1: `flaky` and `second` refused (550), `third` deferred: a notice naming both is spooled (slot 0),
//   and the queue process is killed at the rename of the state file that records the attempt;
// - run 2: `flaky` refused, `second` accepted, `third` deferred: slot 0 is withdrawn (it names a delivered recipient)
//   and a notice naming `flaky` alone is spooled (slot 1); the queue process is killed at the walk's point, each call
//   that changes the spool from the next hop's replies to the attempt's record;
// - later runs: as run 2, and `third` accepted from run 3 on.
// Whatever the point, the sender gets exactly one bounce naming `flaky`, and none naming `second`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crashWalk, startWalkedServer, type CrashAction, type CrashPoint } from '../helpers/crash-walk.ts';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, spooled } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

const walk = crashWalk();
const SENDER = 'a@example.test';

interface Life { bounces: string[]; trace: CrashPoint[]; id: string; killedAt: CrashPoint | undefined }

async function life(n: number, action: CrashAction): Promise<Life> {
  let secondRuns = 0;
  let thirdRuns = 0;
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage !== 'rcpt') return null;
      if (address === 'flaky@example.test') return { code: 550, text: '5.1.1 No such user' };
      if (address === 'second@example.test' && ++secondRuns === 1) return { code: 550, text: '5.1.1 No such user (for now)' };
      // Run 2 has begun (run 1's kill was taken): the walk counts from its replies on.
      if (address === 'second@example.test' && secondRuns === 2) walk.arm(n, action);
      if (address === 'third@example.test' && ++thirdRuns <= 2) return { code: 451, text: '4.2.0 Try again later' };
      return null;
    },
  });
  const { c, remove } = await startWalkedServer(walk, deliveryToSink(sink.port, { retrySchedule: [0.2], scanIntervalMs: 200 }));
  try {
    walk.arm(1, 'kill', { call: 'rename', pathEnd: '.state' });
    const id = await submitMessage(c.port('in'), SENDER, ['flaky@example.test', 'second@example.test', 'third@example.test']);
    const delivered = (to: string): number => sink.messages.filter((m) => m.from !== '' && m.to.includes(to)).length;
    const bounces = (): string[] => sink.messages.filter((m) => m.from === '').map((m) => m.data.toString('latin1'));
    await c.waitFor('second and third delivered, a bounce, and the spool empty', async () =>
      delivered('second@example.test') >= 1 && delivered('third@example.test') >= 1 && bounces().length >= 1 && (await spooled(c)).size === 0);
    const trace = walk.trace();
    walk.disarm();
    // Anything still on its way (a second bounce) is in by the time the spool is empty; nothing is left to send.
    return { bounces: bounces(), trace, id, killedAt: action === 'kill' ? trace.at(-1) : undefined };
  } finally {
    walk.disarm();
    await c.stop();
    await sink.close();
    await remove();
  }
}

const naming = (bounces: string[], who: string): string[] => bounces.filter((b) => new RegExp(`Final-Recipient: rfc822; ${who}@example\\.test`).test(b));
const shortly = (p: CrashPoint): string => `${p.call} ${p.path.replace(/^.*\/data\/spool/, '').replace(/\.\d+\.[0-9a-f]+\.tmp$/, '.<tmp>')}`;

test('crash walk: a run that withdraws a crashed run\'s notice and spools its replacement, killed at each call up to its record, sends one bounce', { timeout: 1_800_000 }, async (t) => {
  const counted = await life(0, 'none');
  assert.equal(naming(counted.bounces, 'flaky').length, 1);
  // The points: from run 2's replies up to the rename of the state file that records its attempt (included).
  const record = counted.trace.findIndex((p) => p.call === 'rename' && p.path.endsWith(`${counted.id}.state`));
  assert.ok(record >= 0, `the record's rename is in the trace: ${counted.trace.map(shortly).join('; ')}`);
  const points = counted.trace.slice(0, record + 1);
  for (const p of points) t.diagnostic(`${p.n} ${shortly(p)}`);
  const only = process.env.POSTERN_CRASH_WALK_AT?.split(',').map(Number);
  const failures: string[] = [];
  for (const p of points) {
    if (only && !only.includes(p.n)) continue;
    const o = await life(p.n, 'kill');
    const where = `kill at ${p.n} (${o.killedAt ? shortly(o.killedAt) : 'not reached'})`;
    const flaky = naming(o.bounces, 'flaky').length;
    const second = naming(o.bounces, 'second').length;
    t.diagnostic(`${where}: ${flaky} bounce(s) naming flaky, ${second} naming second`);
    if (flaky !== 1 || second !== 0) failures.push(`${where}: ${flaky} bounce(s) naming flaky, ${second} naming second`);
  }
  assert.deepEqual(failures, []);
});
