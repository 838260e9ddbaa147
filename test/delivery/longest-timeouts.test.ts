// delivery.commandTimeoutMs and connectTimeoutMs at the largest value the schema takes (2^31-1 ms, Node's longest
// timer). The message's own limit is commandTimeoutMs plus 1 ms a byte: past a timer's reach Node ran it after
// 1 ms, and every message timed out while it went out (deferred, tried again, the same, until it bounced). The
// warning Node gives for such a timer is counted (emitted when the timer is set: no timing involved); the sink
// shows whether the message arrived (7.6 MB: one that does not go out within 1 ms).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';

test('commandTimeoutMs and connectTimeoutMs 2147483647: the message is delivered, no timer overflows', async () => {
  const overflows: string[] = [];
  const onWarning = (w: Error): void => { if (w.name === 'TimeoutOverflowWarning') overflows.push(w.message); };
  process.on('warning', onWarning);
  const sink = await startSink();
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600], commandTimeoutMs: 2147483647, connectTimeoutMs: 2147483647 },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'far.test': [{ exchange: 'mx.far.test', priority: 10 }] }, { 'mx.far.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@origin.test', ['z@far.test'], `Subject: patient\r\n\r\n${'a line of the body\r\n'.repeat(400_000)}`);
    const attempt = await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
    assert.deepEqual(attempt.outcomes.map((o) => [o.status, o.reply.slice(0, 3)]), [['delivered', '250']]);
    assert.match(sink.messages[0]!.data.toString(), /Subject: patient/);
  } finally {
    process.off('warning', onWarning);
    await s.stop();
    await sink.close();
  }
  assert.deepEqual(overflows, []);
});
