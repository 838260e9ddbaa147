// A destination that is not down but slow (it takes a minute to answer the end of each message) with many
// messages queued for it: no failure suspends it, each of its messages waits for one of its
// perDestinationConcurrency slots, and those waiting used to hold the queue runner's own slots (2 ×
// concurrency attempts under way at once) while they waited: the other domains' mail was not even tried until
// the slow destination's backlog had gone through, a minute a message. The peer here answers only when the
// test lets it, so the test does not depend on how slow "slow" is.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type net from 'node:net';
import { startSink } from '../helpers/sink.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { until } from '../helpers/wait.ts';

const SLOW_MESSAGES = 12;

/**
 * A sink for healthy.test and, on 127.0.0.6, a peer for slow.test that answers the end of each message only
 * once the test writes the reply to the socket it keeps in `held`; Postern with perDestinationConcurrency 1.
 */
async function startWithSlowPeer(concurrency: number) {
  const sink = await startSink();
  const held: net.Socket[] = [];
  const peer = { received: 0 };
  const slow = await startScriptedPeer({ endOfData: (sock) => { peer.received++; held.push(sock); return 'answered'; } }, '127.0.0.6', sink.port);
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: {
        enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' },
        concurrency, perDestinationConcurrency: 1, retrySchedule: [3600],
      },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({
      'slow.test': [{ exchange: 'mx.slow.test', priority: 10 }],
      'healthy.test': [{ exchange: 'mx.healthy.test', priority: 10 }],
    }, { 'mx.slow.test': ['127.0.0.6'], 'mx.healthy.test': ['127.0.0.1'] }),
  });
  const stop = async (): Promise<void> => {
    for (const sock of held) sock.destroy();
    await s.stop();
    slow.close();
    await sink.close();
  };
  return { s, sink, held, peer, stop };
}

test('a slow destination with a backlog holds its own slots, not the queue runner\'s: another domain\'s mail is delivered meanwhile, the slow one\'s each once', { timeout: 120_000 }, async () => {
  const { s, held, peer, stop } = await startWithSlowPeer(2);
  let reads = 0;
  const readForDelivery = s.spools.readForDelivery.bind(s.spools);
  s.spools.readForDelivery = (...args) => { reads++; return readForDelivery(...args); };
  try {
    const slowIds: string[] = [];
    for (let i = 0; i < SLOW_MESSAGES; i++) slowIds.push(await s.send('a@origin.test', [`x${i}@slow.test`]));
    await until('the slow destination has the first message', () => held.length === 1, { timeoutMs: 30_000 });
    const healthy = await s.send('a@origin.test', ['z@healthy.test']);
    const e = await s.nextAttempt((x) => x.id === healthy, { timeoutMs: 30_000, past: true });
    assert.equal(e.removed, true, 'delivered while the slow destination still sits on its first message');
    assert.equal(held.length, 1, 'the slow destination has had one message at a time (perDestinationConcurrency: 1)');
    // One on the peer, one waiting for its slot; the rest set aside, holding no attempt slot.
    await until('the slow backlog set aside', () => s.queue!.activeCount === 2 && s.queue!.parkedCount === SLOW_MESSAGES - 2, { timeoutMs: 30_000 });
    // It answers now, each message as it comes: every one delivered once, none deferred for being busy.
    const answer = (): void => { for (const sock of held.splice(0)) sock.write('250 2.0.0 queued\r\n'); };
    await until('every slow message delivered', () => {
      answer();
      return slowIds.every((id) => s.attempts.some((x) => x.id === id && x.removed));
    }, { timeoutMs: 60_000 });
    assert.equal(peer.received, SLOW_MESSAGES, 'each message sent once');
    // Set aside and let back in one per slot given back: a few reads a message, not one per message set aside at each slot.
    assert.ok(reads <= 3 * (SLOW_MESSAGES + 1), `${reads} reads of spooled messages for ${SLOW_MESSAGES + 1} deliveries`);
    for (const id of slowIds) {
      assert.deepEqual(s.attempts.filter((x) => x.id === id).map((x) => [x.attempt, x.removed]), [[1, true]], `${id}: one attempt, which delivered it`);
    }
  } finally {
    await stop();
  }
});

test('a message for the slow destination and another domain, while the slow one\'s line is full: delivered to the other, deferred for the slow one with why', { timeout: 120_000 }, async () => {
  const { s, sink, held, stop } = await startWithSlowPeer(4);
  try {
    // One on the slow peer, one waiting for its slot: its line (perDestinationConcurrency, 1) is full.
    await s.send('a@origin.test', ['x0@slow.test']);
    await until('the slow destination has the first message', () => held.length === 1, { timeoutMs: 30_000 });
    await s.send('a@origin.test', ['x1@slow.test']);
    await until('a second message waits for its slot', () => s.queue!.activeCount === 2, { timeoutMs: 30_000 });
    const both = await s.send('a@origin.test', ['y@slow.test', 'z@healthy.test']);
    const e = await s.nextAttempt((x) => x.id === both, { timeoutMs: 30_000, past: true });
    assert.deepEqual(e.outcomes.map((o) => `${o.recipient} ${o.status}`).sort(), ['y@slow.test temporary', 'z@healthy.test delivered']);
    assert.equal(e.removed, false);
    assert.match(e.outcomes.find((o) => o.recipient === 'y@slow.test')!.reply, /mx\.slow\.test:\d+: every delivery slot of this destination is busy/);
    assert.deepEqual(sink.messages.map((m) => m.to), [['z@healthy.test']], 'the other domain got it once');
    assert.ok(s.logs.some((l) => l.id === both && l.status === 'deferred' && l.reason === 'destination busy'), 'the deferral is logged with why');
    const state = await s.spools.readState(both);
    assert.deepEqual(state?.recipients.map((r) => [r.address, r.status ?? 'pending']), [['y@slow.test', 'pending'], ['z@healthy.test', 'delivered']]);
  } finally {
    await stop();
  }
});
