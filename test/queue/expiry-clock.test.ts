/**
 * A message deferred for longer than delivery.maxAgeHours bounces. Its age was the wall clock's alone: stepped
 * forward (an NTP server gone wrong, an administrator's typo), every deferred message bounced at its next
 * attempt, however young, with "retry period over". The time the clock jumped over, while the queue process
 * watched, is no queue time.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { ONE_WORKER, greeted } from '../helpers/cluster.ts';
import { needsFaketime, startSteppableCluster } from '../helpers/faketime.ts';
import { until } from '../helpers/wait.ts';

test('the wall clock stepped forward past maxAgeHours: deferred mail is retried, not bounced', { skip: needsFaketime, timeout: 180_000 }, async () => {
  let refuse = true;
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && refuse && address.startsWith('b@') ? { code: 451, text: '4.3.0 Try again later' } : null) });
  const s = await startSteppableCluster(`${ONE_WORKER}delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${sink.port} } }
  tls: { mode: none }
  scanIntervalMs: 200
  retrySchedule: [0.5]
  maxAgeHours: 1
`);
  try {
    const client = await greeted(s.c);
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'], 'Subject: deferred\r\n\r\nx\r\n')).code, 250);
    await client.quit();
    await until('a first attempt, deferred', () => sink.attempts.length >= 1, { timeoutMs: 60_000 });
    s.step('+7200');
    const before = sink.attempts.length;
    await until('two more attempts after the step', () => sink.attempts.length >= before + 2, { timeoutMs: 60_000 });
    assert.deepEqual(s.c.logs.filter((l) => /sender non-delivery notification/.test(String(l.msg))).map((l) => l.msg), [], 'no bounce');
    refuse = false;
    await sink.waitFor(1, 60_000);
  } finally {
    await s.close();
    await sink.close();
  }
});
