// A next hop that answers 4xx for ever: the message is retried until delivery.maxAgeHours, then bounces with
// its last 4.x.x status and says it expired; that bounce (null sender) meets the same next hop, expires in
// turn and is discarded — no bounce of a bounce, nothing left circling in the queue.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

test('4xx for ever: retried until maxAgeHours, one expiry bounce, which expires and is discarded', async () => {
  const sink = await startSink({ decide: (stage) => (stage === 'rcpt' ? { code: 451, text: '4.3.0 try again some day' } : null) });
  const s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test',
      listeners: [testListener('in')],
      // About a second and a half of age (a loaded machine may take that long over the first attempt: then it is the one that expires).
      delivery: smarthostDelivery(sink.port, { retrySchedule: [0.2], maxAgeHours: 0.0004 }),
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    const id = await s.send('a@origin.test', ['b@dest.test']);
    const expired = await s.nextAttempt((e) => e.id === id && e.removed, { past: true, timeoutMs: 60_000 });
    assert.ok(expired.bounceId, 'a bounce was spooled');
    assert.ok(s.logs.some((l) => l.id === id && l.bounce === expired.bounceId && l.expired === true), 'the bounce says it expired');
    const bounce = await s.nextAttempt((e) => e.id === expired.bounceId && e.removed, { past: true, timeoutMs: 60_000 });
    assert.equal(bounce.bounceId, null, 'no bounce of a bounce');
    assert.ok(s.logs.some((l) => l.id === expired.bounceId && /undeliverable bounce \(null sender\): discarded/.test(String(l.msg))));
    await until('the queue empty', async () => (await s.spools.list()).length === 0);
    const made = new Set(s.attempts.map((e) => e.id));
    assert.deepEqual([...made].sort(), [id, expired.bounceId!].sort(), 'two messages in all');
    assert.equal(sink.messages.length, 0);
  } finally {
    await s.stop();
    await sink.close();
  }
});
