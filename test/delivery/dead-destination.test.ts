// A destination that takes connections and never greets (a dead or hostile MX, a firewall that accepts and
// stalls) with many messages queued for it used to hold every delivery slot: each message waited for its
// own connection to time out, one per perDestinationConcurrency slot, and the other attempts queued behind
// them for the same destination held the rest of the runner's slots, so mail for every other domain waited
// until each of them had timed out in turn. Once a destination fails to connect it is suspended (Postfix's
// "delivery temporarily suspended"): the messages for it are deferred without a connection until its first
// retry delay has passed, and the other domains' mail goes on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { retryMessages } from '../../engine/queue/admin.ts';
import { startSilentPeer } from '../helpers/silent-peer.ts';

test('a destination that never greets is suspended after its first failure: the rest of its mail is deferred at once, other domains are not starved', async () => {
  const sink = await startSink();
  const dead = await startSilentPeer('127.0.0.5', sink.port);
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: {
        enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' },
        concurrency: 1, perDestinationConcurrency: 1, retrySchedule: [3600], connectTimeoutMs: 2000,
      },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({
      'dead.test': [{ exchange: 'mx.dead.test', priority: 10 }],
      'healthy.test': [{ exchange: 'mx.healthy.test', priority: 10 }],
    }, { 'mx.dead.test': ['127.0.0.5'], 'mx.healthy.test': ['127.0.0.1'] }),
  });
  try {
    const deadIds: string[] = [];
    for (let i = 0; i < 6; i++) deadIds.push(await s.send('a@origin.test', [`x${i}@dead.test`]));
    const healthy = await s.send('a@origin.test', ['z@healthy.test']);
    await s.nextAttempt((e) => e.id === healthy && e.removed, { timeoutMs: 60_000, past: true });
    for (const id of deadIds) {
      const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 60_000, past: true });
      assert.equal(e.outcomes[0]!.status, 'temporary');
    }
    assert.equal(dead.connections, 1, 'one connection found the destination dead; the other messages did not each wait for their own');
    const suspended = s.logs.filter((l) => deadIds.includes(String(l.id)) && /delivery temporarily suspended/.test(String(l.reply)));
    assert.equal(suspended.length, 5, 'the other five are deferred as suspended, naming why');
    assert.match(String(suspended[0]!.reply), /mx\.dead\.test\[127\.0\.0\.5\]:\d+: connection failed: Greeting never received/);
  } finally {
    await s.stop();
    dead.close();
    await sink.close();
  }
});

test('a suspension is lifted by postern queue retry (and a reload): the next hop that came back gets the mail at once', async () => {
  // Nothing listens on 127.0.0.9 at first: connections are refused.
  const probe = await startSink();
  const port = probe.port;
  await probe.close();
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port }, tls: { mode: 'none' }, retrySchedule: [3600], connectTimeoutMs: 5000 },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'back.test': [{ exchange: 'mx.back.test', priority: 10 }] }, { 'mx.back.test': ['127.0.0.9'] }),
  });
  let peer: Awaited<ReturnType<typeof startScriptedPeer>> | null = null;
  try {
    const a = await s.send('a@origin.test', ['x@back.test']);
    await s.nextAttempt((e) => e.id === a, { past: true });
    const b = await s.send('a@origin.test', ['y@back.test']);
    const deferred = await s.nextAttempt((e) => e.id === b, { past: true });
    assert.match(deferred.outcomes[0]!.reply, /^delivery temporarily suspended: mx\.back\.test\[127\.0\.0\.9\]:\d+: connection failed/);
    let delivered = 0;
    peer = await startScriptedPeer({ endOfData: () => { delivered++; } }, '127.0.0.9', port);
    await retryMessages(s.spools, 'all'); // `postern queue retry --all`
    await s.nextAttempt((e) => e.id === a && e.removed, { timeoutMs: 30_000, past: true });
    await s.nextAttempt((e) => e.id === b && e.removed, { timeoutMs: 30_000, past: true });
    assert.equal(delivered, 2);
  } finally {
    await s.stop();
    peer?.close();
  }
});
