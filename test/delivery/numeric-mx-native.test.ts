// An MX record naming an address in a form other than dotted quads (`127.1`, `2130706433`, `0x7f000001`): with
// delivery.hostLookup native, getaddrinfo reads such a name as the address itself (inet_aton's short, decimal, hex
// and octal forms), so a sender's domain could point our delivery at any address, loopback included, with no lookup
// made, as the dotted-quad MX that routing.ts refuses. A real DNS server on loopback, a real SMTP sink on 127.0.0.1.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';

let sink: Sink;
let dns: TestDnsServer;
let s: DeliveryServer;

const mx = (exchange: string) => [{ type: 'MX' as const, value: { exchange, priority: 10 } }];

before(async () => {
  sink = await startSink();
  dns = await startDnsServer({
    'short.test': mx('127.1'),
    'decimal.test': mx('2130706433'),
    'hex.test': mx('0x7f000001'),
    'octal.test': mx('0177.0.0.1'),
  });
  s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: sink.port }, hostLookup: 'native', tls: { mode: 'none' }, dnsServers: [dns.address], retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
});
after(async () => {
  await s?.stop();
  await dns?.stop();
  await sink?.close();
});

test('an MX record naming an address in a numeric form getaddrinfo reads is not connected to', { timeout: 120_000 }, async () => {
  const to = ['a@short.test', 'b@decimal.test', 'c@hex.test', 'd@octal.test'];
  const id = await s.send('me@origin.test', to);
  const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 90_000, past: true });
  const got = Object.fromEntries(e.outcomes.map((o) => [o.recipient, `${o.status} ${o.enhanced ?? ''}`.trim()]));
  assert.deepEqual(got, {
    'a@short.test': 'temporary 4.4.4',
    'b@decimal.test': 'temporary 4.4.4',
    'c@hex.test': 'temporary 4.4.4',
    'd@octal.test': 'temporary 4.4.4',
  }, JSON.stringify(e.outcomes, null, 1));
  assert.deepEqual(sink.messages.filter((m) => m.from === 'me@origin.test').flatMap((m) => m.to), [], 'nothing reached 127.0.0.1');
  const reply = e.outcomes.find((o) => o.recipient === 'a@short.test')!.reply;
  assert.equal(reply, 'MX records of short.test name no valid host ("127.1"): not used');
});
