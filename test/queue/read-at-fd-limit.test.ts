// The queue runner at its open-file limit (a descriptor leak elsewhere, a flood of connections) with deferred mail
// coming due: each attempt's read of its spool file failed with EMFILE and was logged at error, "cannot read the spool
// file now: tried again later", once per message per retry — a queue of thousands gave thousands of identical lines a
// minute that buried the one that said what happened. Now the first failure of an episode is logged at error, the
// repeats at debug, and the read that works again says so once, with how many failed. No message is lost or counted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { startSink } from '../helpers/sink.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { exhaustDescriptors } from '../helpers/process-resources.ts';
import { until } from '../helpers/wait.ts';

test('reads of deferred messages failing at the open-file limit are logged once per episode, and the recovery once', { timeout: 120_000 }, async () => {
  const sink = await startSink({ decide: (stage) => (stage === 'rcpt' ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const s = await startDeliveryServer({
    config: configYaml({ localDomains: ['example.org'], listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { scanIntervalMs: 600_000, retrySchedule: [1] }) }),
  });
  try {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await s.send('a@example.com', ['b@example.org']));
    for (const id of ids) await s.nextAttempt((e) => e.id === id && e.attempt === 1, { past: true });
    const readFailures = (): Array<Record<string, unknown>> => s.logs.filter((l) => /cannot read the spool file now/.test(String(l.msg)));
    const full = exhaustDescriptors();
    try {
      // Each message comes due every second (retrySchedule [1]): 20 failed reads are four rounds of the five.
      await until('20 failed reads', () => { full.topUp(); return readFailures().length >= 20; }, { timeoutMs: 60_000 });
    } finally {
      full.release();
    }
    const recoveryLine = (): Record<string, unknown> | undefined => s.logs.find((l) => /reading spool files works again/.test(String(l.msg)));
    await until('a read that works again', () => recoveryLine() !== undefined, { timeoutMs: 30_000 }).catch(() => undefined);
    const recovered = recoveryLine();
    const errors = readFailures().filter((l) => Number(l.level) >= 50);
    assert.equal(errors.length, 1, `${readFailures().length} failed reads: logged at error once, not per message per retry`);
    assert.match(JSON.stringify(errors[0]), /EMFILE/, 'the cause');
    assert.ok(recovered && Number(recovered.failures) >= 20, 'the read that works again says so, with how many failed');
    // Nothing lost or counted against the messages: each is tried again, at its second attempt.
    for (const id of ids) await s.nextAttempt((e) => e.id === id && e.attempt === 2, { past: true });
  } finally {
    await s.stop();
    await sink.close();
  }
});
