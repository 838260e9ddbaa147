// A slow destination's backlog is set aside (parked) and let back in one message per slot it gives back. When that
// destination then failed (a reply timed out: suspended), the slot given back let in one message, deferred at once
// as suspended without taking a slot, so none was given back for the next: the rest stayed set aside, neither tried
// nor deferred nor aging toward their bounce, let in perDestinationConcurrency per scan (hours for a backlog of
// thousands). A suspended destination's set-aside mail is now all let in, and deferred at once as the rest of its mail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type net from 'node:net';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { until } from '../helpers/wait.ts';

const MESSAGES = 8;

test('a destination suspended while its backlog is set aside: every message of that backlog is deferred at once, not one per scan', { timeout: 120_000 }, async () => {
  const held: net.Socket[] = [];
  // Takes the first message and never answers its end: the reply times out, and the destination is suspended.
  const peer = await startScriptedPeer({ endOfData: (sock) => { held.push(sock); return 'answered'; } }, '127.0.0.6');
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: {
        enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' },
        concurrency: 2, perDestinationConcurrency: 1, retrySchedule: [3600], commandTimeoutMs: 10_000, endOfDataTimeoutMs: 10_000,
        scanIntervalMs: 600_000, // no scan lets any in meanwhile
      },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'slow.test': [{ exchange: 'mx.slow.test', priority: 10 }] }, { 'mx.slow.test': ['127.0.0.6'] }),
  });
  try {
    const ids: string[] = [];
    for (let i = 0; i < MESSAGES; i++) ids.push(await s.send('a@origin.test', [`x${i}@slow.test`]));
    // One at the peer, one waiting for its slot, the rest set aside: all before the reply times out.
    await until('the backlog set aside', () => held.length === 1 && s.queue!.parkedCount === MESSAGES - 2, { timeoutMs: 30_000 });
    assert.equal(s.attempts.length, 0, 'nothing timed out yet');
    const outcomes = await Promise.all(ids.map(async (id) => (await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).outcomes[0]!));
    assert.ok(outcomes.every((o) => o.status === 'temporary'));
    const suspended = outcomes.filter((o) => /^delivery temporarily suspended: .*timed out/.test(o.reply));
    assert.equal(suspended.length, MESSAGES - 1, 'all but the one that timed out deferred as suspended');
    assert.equal(s.queue!.parkedCount, 0);
  } finally {
    for (const sock of held) sock.destroy();
    await s.stop();
    peer.close();
  }
});
