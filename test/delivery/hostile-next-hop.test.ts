// A next hop that never finishes a reply (a byte now and then: continuation lines at EHLO, "25" and then one
// digit at a time after the message) used to hold its delivery, and its slot of delivery.concurrency, for
// ever: nodemailer's socket timeout counts only time without any byte. Any domain's MX can do this, so two
// such hosts starved every other delivery with concurrency 2. Each reply now has commandTimeoutMs to be
// complete: the two are deferred (the one whose message went out says it may be delivered twice), the
// healthy domain is delivered, and the server stops without waiting for the hosts that are still dripping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type net from 'node:net';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { startSink } from '../helpers/sink.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { until } from '../helpers/wait.ts';
import { configYaml, testListener } from '../helpers/config.ts';

type Drip = 'at-ehlo' | 'after-data';

/** A next hop on `host:port` that drips a reply that never ends, at EHLO or after the message. */
async function startDrippingPeer(host: string, port: number, where: Drip): Promise<{ dripping: number; close(): void }> {
  const state = { dripping: 0 };
  const drip = (s: net.Socket, first: string, next: string): void => {
    state.dripping++;
    s.write(first);
    const timer = setInterval(() => s.write(next), 100);
    s.once('close', () => clearInterval(timer));
  };
  const peer = await startScriptedPeer({
    ehlo: (s) => (where === 'at-ehlo' ? (drip(s, '250-peer\r\n', '250-still here\r\n'), 'stop') : undefined),
    endOfData: (s) => (where === 'after-data' ? (drip(s, '25', '0'), 'stop') : undefined),
  }, host, port);
  return { get dripping() { return state.dripping; }, close: peer.close };
}

test('next hops that never finish a reply are timed out per reply; they cannot hold every delivery slot', async () => {
  const sink = await startSink();
  // The MX port is one setting: the dripping hosts listen on other loopback addresses, same port.
  const ehlo = await startDrippingPeer('127.0.0.3', sink.port, 'at-ehlo');
  const data = await startDrippingPeer('127.0.0.4', sink.port, 'after-data');
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, concurrency: 2, retrySchedule: [3600], commandTimeoutMs: 1500, endOfDataTimeoutMs: 1500 },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({
      'drip-ehlo.test': [{ exchange: 'mx.drip-ehlo.test', priority: 10 }],
      'drip-data.test': [{ exchange: 'mx.drip-data.test', priority: 10 }],
      'healthy.test': [{ exchange: 'mx.healthy.test', priority: 10 }],
    }, {
      'mx.drip-ehlo.test': ['127.0.0.3'],
      'mx.drip-data.test': ['127.0.0.4'],
      'mx.healthy.test': ['127.0.0.1'],
    }),
  });
  try {
    const first = await s.send('a@origin.test', ['x@drip-ehlo.test']);
    const second = await s.send('a@origin.test', ['y@drip-data.test']);
    // Both slots taken by dripping hosts before the healthy message comes in.
    await until('both dripping hosts reached', () => ehlo.dripping >= 1 && data.dripping >= 1, { timeoutMs: 60_000 });
    const healthy = await s.send('a@origin.test', ['z@healthy.test'], 'Subject: healthy\r\n\r\nbody\r\n');
    await sink.waitFor(1, 60_000);
    assert.match(sink.messages[0]!.data.toString(), /Subject: healthy/);
    await s.nextAttempt((e) => e.id === healthy && e.removed, { timeoutMs: 60_000, past: true });
    const a = await s.nextAttempt((e) => e.id === first, { timeoutMs: 60_000, past: true });
    const b = await s.nextAttempt((e) => e.id === second, { timeoutMs: 60_000, past: true });
    assert.equal(a.outcomes[0]!.status, 'temporary');
    assert.match(a.outcomes[0]!.reply, /Timeout/);
    assert.equal(b.outcomes[0]!.status, 'temporary');
    assert.match(b.outcomes[0]!.reply, /lost connection after the end of the message, before its reply \(Timeout\).*more than once/);
  } finally {
    await s.stop();
    ehlo.close();
    data.close();
    await sink.close();
  }
});

test('stopping the server does not wait for a next hop that is still dripping its EHLO reply', async () => {
  const sink = await startSink();
  const ehlo = await startDrippingPeer('127.0.0.3', sink.port, 'at-ehlo');
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      // A reply limit far beyond the test's guard: only closing the connection being set up ends it.
      delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600], commandTimeoutMs: 3_600_000 },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'drip-ehlo.test': [{ exchange: 'mx.drip-ehlo.test', priority: 10 }] }, { 'mx.drip-ehlo.test': ['127.0.0.3'] }),
  });
  try {
    await s.send('a@origin.test', ['x@drip-ehlo.test']);
    await until('the dripping host reached', () => ehlo.dripping >= 1, { timeoutMs: 60_000 });
    await s.stop(); // hangs (test timeout) if the connection being opened is left to drip
  } finally {
    ehlo.close();
    await sink.close();
  }
});
