// Delivery against a real DNS server on loopback (test/helpers/dns-server.ts) and a real SMTP next hop: what
// each DNS answer means for the mail. NXDOMAIN, null MX and a name DNS cannot hold bounce; SERVFAIL, REFUSED,
// a truncated answer that cannot be had over TCP, and MX records naming addresses or no host name defer; an
// MX host that is an alias is followed; one without an address (or an alias loop) is skipped for the next, and
// when none has one the mail waits (the domain's own A record is only for a domain without MX); and a name
// that takes a few seconds to resolve is waited for (c-ares times each try from recent answers: see
// engine/dns/within-budget.ts).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';
import { createResolver, MAX_CACHED } from '../../engine/delivery/dns.ts';

let sink: Sink;
let dns: TestDnsServer;
let s: DeliveryServer;

/** A label DNS cannot hold (63 octets at most), which smtp-server's RCPT takes: no query is made (EBADNAME). */
const LONG_LABEL = 'x'.repeat(70);
const here = [{ type: 'A' as const, value: '127.0.0.1' }];
const mx = (...hosts: string[]) => hosts.map((exchange, i) => ({ type: 'MX' as const, value: { exchange, priority: 10 * (i + 1) } }));

before(async () => {
  sink = await startSink();
  dns = await startDnsServer({
    'live.test': mx('mx.live.test'),
    'mx.live.test': here,
    'servfail.test': [],
    'refused.test': [],
    'null.test': [{ type: 'MX', value: { exchange: '.', priority: 0 } }],
    'second.test': mx('ghost.second.test', 'mx.live.test'),
    'implicit.test': here,
    'allfail.test': [...mx('ghost.allfail.test', 'empty.allfail.test'), ...here],
    'empty.allfail.test': [{ type: 'TXT', value: ['no address here'] }],
    'tc.test': mx('mx.live.test'),
    'warm.test': mx('mx.live.test'),
    'slow.test': mx('mx.live.test'),
    'numeric.test': mx('127.0.0.1'),
    'forged.test': mx('x, status=sent.forged.test'),
    'x, status=sent.forged.test': here,
    'nulls.test': mx('.', '.'),
    'viacname.test': mx('alias.live.test'),
    'alias.live.test': [{ type: 'CNAME', value: 'mx.live.test' }],
    'loop.test': mx('a.loop.test'),
    'a.loop.test': [{ type: 'CNAME', value: 'b.loop.test' }],
    'b.loop.test': [{ type: 'CNAME', value: 'a.loop.test' }],
    'mixed.test': mx('127.0.0.1', 'mx.live.test'),
  });
  dns.servfail.add('servfail.test');
  dns.refused.add('refused.test');
  dns.truncated.add('tc.test');
  s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, dnsServers: [dns.address], retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
});
after(async () => {
  await s?.stop();
  await dns?.stop();
  await sink?.close();
});

test('each DNS answer for a recipient domain, end to end: delivered, bounced or deferred as it says', { timeout: 120_000 }, async () => {
  const to = ['a@live.test', 'b@nx.test', 'c@servfail.test', 'd@refused.test', 'e@null.test', 'f@second.test', 'g@implicit.test', 'h@allfail.test', 'i@tc.test', 'j@numeric.test', 'k@mixed.test', 'l@nulls.test', `m@${LONG_LABEL}.test`, 'n@viacname.test', 'o@loop.test', 'q@forged.test'];
  const id = await s.send('me@origin.test', to);
  const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 90_000, past: true });
  const got = Object.fromEntries(e.outcomes.map((o) => [o.recipient, `${o.status} ${o.enhanced ?? ''}`.trim()]));
  assert.deepEqual(got, {
    'a@live.test': 'delivered 2.0.0',
    'b@nx.test': 'permanent 5.1.2',
    'c@servfail.test': 'temporary 4.4.3',
    'd@refused.test': 'temporary 4.4.3',
    'e@null.test': 'permanent 5.1.10',
    'f@second.test': 'delivered 2.0.0',
    'g@implicit.test': 'delivered 2.0.0',
    'h@allfail.test': 'temporary 4.4.4',
    'i@tc.test': 'temporary 4.4.3',
    'j@numeric.test': 'temporary 4.4.4',
    'k@mixed.test': 'delivered 2.0.0',
    'l@nulls.test': 'permanent 5.1.10',
    [`m@${LONG_LABEL}.test`]: 'permanent 5.1.2',
    'n@viacname.test': 'delivered 2.0.0',
    'o@loop.test': 'temporary 4.4.4',
    'q@forged.test': 'temporary 4.4.4',
  }, JSON.stringify(e.outcomes, null, 1));
  const delivered = sink.messages.filter((m) => m.from === 'me@origin.test').flatMap((m) => m.to).sort();
  assert.deepEqual(delivered, ['a@live.test', 'f@second.test', 'g@implicit.test', 'k@mixed.test', 'n@viacname.test']);
  // An MX record naming an address is not used (Postfix and Exim refuse it too); before, it was connected to.
  const outcome = (r: string) => e.outcomes.find((o) => o.recipient === r)!;
  assert.equal(outcome('j@numeric.test').reply, 'MX records of numeric.test name no valid host ("127.0.0.1"): not used');
  // Nor one that is no host name (it was looked up as it came: a name service error on every attempt).
  assert.equal(outcome('q@forged.test').reply, 'MX records of forged.test name no valid host ("x, status=sent.forged.test"): not used');
  assert.match(outcome('k@mixed.test').remoteMta!, /^mx\.live\.test\[/);
  // A name DNS cannot hold bounces (it was 4.4.3, retried until the queue lifetime).
  assert.match(outcome(`m@${LONG_LABEL}.test`).reply, /not a valid domain name/);
  assert.equal(dns.queries.get('A allfail.test'), undefined, 'the A record of a domain with MX is not a fallback');
  assert.equal(dns.queries.get('MX null.test'), 1);
});

test('after many quick answers, a recipient domain whose MX takes 3 s to resolve is delivered, not deferred', { timeout: 120_000 }, async () => {
  // Before: c-ares gave each of its 2 tries about 1 s once the server had answered quickly a few times
  // (whatever the 5 s timeout said), so the lookup failed with ETIMEOUT after ~2 s: deferred, and the
  // failure kept for 30 s for every other message to that domain.
  const warm = await s.send('me@origin.test', ['w@warm.test']);
  assert.equal((await s.nextAttempt((x) => x.id === warm, { timeoutMs: 60_000, past: true })).outcomes[0]!.status, 'delivered');
  dns.recursing.set('slow.test', 3000);
  const id = await s.send('me@origin.test', ['z@slow.test']);
  const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 60_000, past: true });
  assert.equal(e.outcomes[0]!.status, 'delivered', JSON.stringify(e.outcomes[0]));
  assert.ok(dns.queries.get('MX slow.test')! >= 2, 'asked again while it waited');
});

test('the lookup cache: a flood of domains looked up once (bounces to made-up senders) does not push out one looked up again', { timeout: 120_000 }, async () => {
  // Before: one list, oldest first, a hit not counting: MAX_CACHED other domains pushed every answer out.
  const resolver = createResolver({ hostLookup: 'dns', servers: [dns.address] });
  const asked = (key: string) => dns.queries.get(key) ?? 0;
  await resolver.mx('warm.test');
  await resolver.mx('warm.test');
  const before = asked('MX warm.test');
  const flood = (i: number) => `d${i}.flood.test`;
  const count = MAX_CACHED + 250;
  for (let i = 0; i < count; i++) dns.zone.set(flood(i), [{ type: 'TXT', value: ['no MX: an empty answer, kept'] }]);
  for (let i = 0; i < count; i += 250) {
    await Promise.all(Array.from({ length: 250 }, (_, j) => resolver.mx(flood(i + j))));
  }
  await resolver.mx('warm.test');
  assert.equal(asked('MX warm.test'), before, 'still kept');
  await resolver.mx(flood(0));
  assert.equal(asked(`MX ${flood(0)}`), 2, 'bounded: the oldest of the flood went');
});
