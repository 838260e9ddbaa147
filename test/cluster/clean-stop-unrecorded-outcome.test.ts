/**
 * An attempt whose record could not be written (the state file's rename failed with EIO: a disk error that passed)
 * keeps its outcome in memory and writes it at the message's next try, a retry delay later (an hour here), so that no
 * recipient is sent to twice. A clean stop in between (`systemctl restart`, an upgrade) dropped that memory: after
 * the start the message was read as its spool file says (never attempted) and the recipient the next hop had accepted
 * got a second copy, without any crash. The stop now writes what it kept before the process ends.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crashWalk, startWalkedServer, workerAndQueueReady } from '../helpers/crash-walk.ts';
import { startSink } from '../helpers/sink.ts';
import { startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

test('an outcome kept in memory for want of a state file is written at a clean stop: no second copy after the start', { timeout: 180_000 }, async () => {
  const walk = crashWalk();
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && address === 'later@example.test' ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const config = deliveryToSink(sink.port, { retrySchedule: [3600] });
  const first = await startWalkedServer(walk, config);
  try {
    // The first state file the queue process renames into place: that of the first attempt (ok delivered, later deferred).
    walk.arm(1, 'eio', { call: 'rename', pathEnd: '.state' });
    const id = await submitMessage(first.c.port('in'), 'a@example.test', ['ok@example.test', 'later@example.test']);
    await first.c.waitFor('the record failed, the outcome kept in memory', () => first.c.logs.some((l) => l.id === id && /cannot record the outcome/.test(String(l.msg))));
    assert.equal(walk.hit()?.call, 'rename');
    walk.disarm();
    assert.equal(sink.messages.filter((m) => m.to.includes('ok@example.test')).length, 1, 'ok delivered once');
    const exited = new Promise<number | null>((r) => first.c.proc.once('exit', (code) => r(code)));
    await first.c.stop();
    assert.equal(await exited, 0, 'a clean stop');

    const again = await startCluster({ config: `${ONE_WORKER}${config}`, env: walk.env, dataDir: first.dataDir });
    try {
      await workerAndQueueReady(again);
      // Its next try after the start: later deferred again (due at once if the record was lost; else an hour away).
      const retried = (): boolean => again.logs.some((l) => l.id === id && l.status === 'deferred');
      const retry = await runCli(['queue', 'retry', id, '-c', `${again.dir}/postern.yaml`]);
      assert.equal(retry.code, 0, retry.stderr);
      await again.waitFor('the message tried again after the start', retried);
      assert.equal(sink.messages.filter((m) => m.to.includes('ok@example.test')).length, 1, 'ok not sent a second time');
    } finally {
      await again.stop();
    }
  } finally {
    await first.remove();
    await sink.close();
  }
});
