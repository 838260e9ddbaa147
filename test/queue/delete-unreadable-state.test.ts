/**
 * `postern queue delete` of a message whose state file cannot be read. The delete withdraws the failure notices of the
 * message's attempt not yet recorded (spooled by a run a crash cut off, or by the run under way), which would otherwise
 * go out for a message deleted "without delivering or bouncing it": the attempt after the one its state file counts.
 * A state file that could not be parsed (cut short, damaged) was taken for none, so attempt 1 was taken for unrecorded:
 * its bounce, recorded, for a recipient the next hop had refused for good and still waiting to reach the sender, was
 * withdrawn, and the sender never learnt of the failure. Which attempt is unrecorded is not known then; the queue runner
 * lets every notice of such a message go (it holds none back for a record it cannot read), and so does the delete. A
 * failure of the disk itself (EIO) fails the command instead, to be run again. A real `postern serve`, sink and command.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { spooled, startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

test('postern queue delete of a message whose state file is damaged does not withdraw the bounce its recorded attempt spooled', { timeout: 180_000 }, async () => {
  let acceptBounces = false;
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage === 'mail' && address === '' && !acceptBounces) return { code: 451, text: '4.3.0 Not now' };
      if (stage !== 'rcpt') return null;
      if (address === 'bad@example.test') return { code: 550, text: '5.1.1 No such user' };
      if (address === 'later@example.test') return { code: 451, text: '4.2.0 Try again later' };
      return null;
    },
  });
  // No retry within the test: the message's state stays as its first attempt wrote it.
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [3600] })}` });
  const config = join(c.dir, 'postern.yaml');
  try {
    const id = await submitMessage(c.port('in'), 'a@example.test', ['bad@example.test', 'later@example.test']);
    const noted = await c.waitFor('the bounce spooled', () => c.logs.find((l) => l.id === id && typeof l.bounce === 'string' && /non-delivery notification/.test(String(l.msg))), 60_000);
    const bounceId = String(noted.bounce);
    const state = join(c.dataDir, 'spool', 'worker-0', 'queue', `${id}.state`);
    await c.waitFor('attempt 1 recorded', () => existsSync(state), 60_000);
    await c.waitFor('the bounce\'s first attempt deferred', () => c.logs.some((l) => l.id === bounceId && l.status === 'deferred'), 60_000);

    writeFileSync(state, '{"attempts": 1, "nextAtt'); // cut short
    const deleted = await runCli(['queue', 'delete', id, '-c', config]);
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.ok(!(await spooled(c)).has(id), 'the message deleted');

    acceptBounces = true;
    const retried = await runCli(['queue', 'retry', bounceId, '-c', config]);
    assert.equal(retried.code, 0, retried.stderr);
    const bounces = (): number => sink.messages.filter((m) => m.from === '' && m.to.includes('a@example.test')).length;
    await c.waitFor('the bounce delivered, or gone', async () => bounces() > 0 || !(await spooled(c)).has(bounceId), 60_000);
    assert.equal(bounces(), 1, 'the sender gets the bounce for bad@');
    assert.match(sink.messages.find((m) => m.from === '')!.data.toString(), /bad@example\.test/);
  } finally {
    await c.stop();
    await sink.close();
  }
});
