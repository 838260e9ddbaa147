// One message to many domains (a mailing list's post) is one attempt but a transaction per destination, each
// waiting for a slot of delivery.concurrency. Those slots were handed out first come, first served: every
// transaction of that message queued ahead of any other message's, so when its destinations were slow or dead
// (each waiting out its connection timeout) mail to a healthy domain that came in meanwhile waited for all of
// them. Slots now go round the messages that wait for one (as Postfix's queue manager goes round its
// destinations): the other message gets the next slot given back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { startSilentPeer, type SilentPeer } from '../helpers/silent-peer.ts';
import { until } from '../helpers/wait.ts';
import type { MxRecord } from '../../engine/delivery/dns.ts';

const DEAD = 12;

test('a message to many dead domains does not hold back a message to a healthy one: it gets the next slot given back', { timeout: 120_000 }, async () => {
  const sink = await startSink();
  const peers: SilentPeer[] = [];
  const mx: Record<string, MxRecord[]> = { 'healthy.test': [{ exchange: 'mx.healthy.test', priority: 10 }] };
  const hosts: Record<string, string[]> = { 'mx.healthy.test': ['127.0.0.1'] };
  for (let i = 0; i < DEAD; i++) {
    // Each on an address of its own (same port, the route's): twelve destinations, none suspended by another's failure.
    peers.push(await startSilentPeer(`127.0.1.${i + 10}`, sink.port));
    mx[`dead${i}.test`] = [{ exchange: `mx.dead${i}.test`, priority: 10 }];
    hosts[`mx.dead${i}.test`] = [`127.0.1.${i + 10}`];
  }
  const connections = (): number => peers.reduce((n, p) => n + p.connections, 0);
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: {
        enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' },
        concurrency: 1, perDestinationConcurrency: 1, retrySchedule: [3600], connectTimeoutMs: 1500,
      },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver(mx, hosts),
  });
  try {
    const list = await s.send('a@origin.test', Array.from({ length: DEAD }, (_, i) => `x@dead${i}.test`));
    // The list's first transaction holds the slot; its eleven others wait for it.
    await until('the first dead destination reached', () => connections() >= 1, { timeoutMs: 60_000 });
    let atDelivery = -1;
    let listDone = false;
    const off = s.queue!.onAttempt((e) => {
      if (e.id === list) listDone = true;
      else if (e.removed) atDelivery = connections();
    });
    const healthy = await s.send('a@origin.test', ['z@healthy.test']);
    await s.nextAttempt((e) => e.id === healthy && e.removed, { timeoutMs: 90_000, past: true });
    off();
    assert.equal(listDone, false, 'the healthy domain\'s message did not wait for the whole list');
    // Normally 2 (the one under way when it came, then its own turn); a loaded machine may be slower to queue it.
    assert.ok(atDelivery <= DEAD / 2, `delivered after ${atDelivery} dead destinations had been tried, not after all ${DEAD}`);
    assert.equal(sink.messages.length, 1);
    const e = await s.nextAttempt((x) => x.id === list, { timeoutMs: 90_000, past: true });
    assert.equal(e.outcomes.length, DEAD);
    assert.ok(e.outcomes.every((o) => o.status === 'temporary'));
  } finally {
    await s.stop();
    for (const p of peers) p.close();
    await sink.close();
  }
});
