// A domain's DNS chooses its MX set. Thousands of MX names that do not resolve (or whose address lookups time
// out at the attacker's name server) were each looked up in turn by one transaction, which held its delivery
// slot for as long: only addresses actually connected to were counted against the 5 connection tries. Each
// transaction now looks up at most MAX_HOST_LOOKUPS names.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { MAX_HOST_LOOKUPS } from '../../engine/delivery/transaction.ts';
import { createResolver, MAX_RECORDS, type DeliveryResolver } from '../../engine/delivery/dns.ts';
import { startDnsServer } from '../helpers/dns-server.ts';

test('an MX set of 3000 names that do not resolve: at most MAX_HOST_LOOKUPS looked up per attempt, then deferred', async () => {
  const sink = await startSink();
  const mx = Array.from({ length: 3000 }, (_, i) => ({ exchange: `mx${i}.many.test`, priority: i }));
  const inner = fakeResolver({ 'many.test': mx }, {});
  const looked: string[] = [];
  const resolver: DeliveryResolver = { mx: (d) => inner.mx(d), addresses: (h) => { looked.push(h); return inner.addresses(h); } };
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver,
  });
  try {
    const id = await s.send('a@origin.test', ['x@many.test']);
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 60_000, past: true });
    assert.equal(e.outcomes[0]!.status, 'temporary');
    assert.match(e.outcomes[0]!.reply, /Host or domain name not found/);
    assert.equal(looked.length, MAX_HOST_LOOKUPS, `looked up: ${looked.length}`);
    assert.deepEqual(looked, mx.slice(0, MAX_HOST_LOOKUPS).map((r) => r.exchange), 'the most preferred ones');
  } finally {
    await s.stop();
    await sink.close();
  }
});

test('a domain answering 2500 MX records, a host 2500 addresses: the resolver keeps the 20 best of each, not every one in its cache', async () => {
  // Each answer is one UDP datagram from a real DNS server; kept whole, 10 000 of them held ~1.5 GB in the
  // delivery cache (a sender's domain chooses them: its bounces go there).
  const mx = Array.from({ length: 2500 }, (_, i) => ({ type: 'MX' as const, value: { exchange: `h${i}.e`, priority: 3000 - i } }));
  const a = Array.from({ length: 2500 }, (_, i) => ({ type: 'A' as const, value: `10.0.${i >> 8}.${i & 255}` }));
  const dns = await startDnsServer({ 'many.test': mx, 'mx.many.test': a });
  try {
    const resolver = createResolver({ hostLookup: 'dns', servers: [dns.address] });
    const records = await resolver.mx('many.test');
    assert.equal(records.length, MAX_RECORDS);
    // The best (lowest) priorities, which came last in the answer.
    assert.deepEqual(records.map((r) => r.priority), Array.from({ length: MAX_RECORDS }, (_, i) => 501 + i));
    assert.equal(records[0]!.exchange, 'h2499.e');
    const addresses = await resolver.addresses('mx.many.test');
    assert.equal(addresses.length, MAX_RECORDS);
  } finally {
    await dns.stop();
  }
});
