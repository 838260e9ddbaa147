// The queue runner at its open-file limit (a descriptor leak elsewhere, a flood of connections): every scan of the
// spool fails with EMFILE. Each failure was logged at error with its stack, at every scan (scanIntervalMs, and each
// message a worker spools asks for one): thousands of identical lines an hour that bury the one that says what
// happened. Now the first failure of a kind is logged at error, the repeats at debug, and the scan that works again
// says so once, with how many failed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { startSink } from '../helpers/sink.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { exhaustDescriptors } from '../helpers/process-resources.ts';

test('scans failing at the open-file limit are logged once per episode, and the recovery once', async () => {
  const sink = await startSink({});
  const s = await startDeliveryServer({
    config: configYaml({ localDomains: ['example.org'], listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { scanIntervalMs: 60_000 }) }),
  });
  try {
    const failed = (): Array<Record<string, unknown>> => s.logs.filter((l) => /spool scan failed/.test(String(l.msg)) && Number(l.level) >= 50);
    const recovered = (): Array<Record<string, unknown>> => s.logs.filter((l) => /spool scan works again/.test(String(l.msg)));
    await s.queue!.scan(); // warm: what a scan opens lazily is open
    for (let episode = 1; episode <= 2; episode++) {
      const [failedBefore, recoveredBefore] = [failed().length, recovered().length];
      const full = exhaustDescriptors();
      try {
        for (let i = 0; i < 20; i++) {
          full.topUp(); // what the last scan closed
          await s.queue!.scan();
        }
      } finally {
        full.release();
      }
      // An episode ends at a scan that works. On a loaded machine a descriptor the process closes after topUp() (a
      // scan's folder handle, a socket) can let one scan in the middle succeed: that ends the episode honestly and the
      // next failure starts another. So the property: one error line per episode, each episode's end said once.
      const errors = failed().length - failedBefore;
      const endedWithin = recovered().length - recoveredBefore;
      assert.equal(errors, endedWithin + 1, `20 failed scans in episode ${episode}: logged at error once per episode (${endedWithin} ended by a scan that found a descriptor free)`);
      assert.ok(errors <= 5, `not per scan (${errors} error lines for 20 scans)`);
      assert.match(JSON.stringify(failed().at(-1)), /EMFILE/, 'the cause');
      await s.queue!.scan();
      assert.equal(recovered().length - recoveredBefore, endedWithin + 1, 'the scan that works again says so once');
      const failures = Number(recovered().at(-1)!.failures);
      assert.ok(failures >= 1 && failures <= 20, `with how many failed (${failures}; calls made during a scan share it)`);
      if (endedWithin === 0) assert.ok(failures > 1, `an episode of 20 scans counts more than one failure (${failures})`);
    }
    // And the queue still delivers.
    await s.send('a@example.com', ['b@example.org']);
    await s.nextAttempt((e) => e.outcomes.every((o) => o.status === 'delivered'), { past: true });
  } finally {
    await s.stop();
    await sink.close();
  }
});
