// postern_deliveries_total's next_hop label comes from DNS: by MX, the domains that senders and recipients
// choose name the hosts. Each distinct value is a time series kept for the life of the process, so past
// 100 of them new next hops are counted under `other` (engine/metrics/bounded-label.ts).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startDnsServer, type TestDnsServer, type TestRecord } from '../helpers/dns-server.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { registry } from '../../engine/metrics/metrics.ts';

const DOMAINS = 110;
const domains = Array.from({ length: DOMAINS }, (_, i) => `d${i}.test`);
let dns: TestDnsServer;
let sink: Sink;
let s: DeliveryServer;

before(async () => {
  const zone: Record<string, TestRecord[]> = {};
  domains.forEach((d, i) => {
    zone[d] = [{ type: 'MX', value: { exchange: `mx${i}.test`, priority: 10 } }];
    zone[`mx${i}.test`] = [{ type: 'A', value: '127.0.0.1' }];
  });
  dns = await startDnsServer(zone);
  sink = await startSink();
  s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test',
      localDomains: domains,
      listeners: [testListener('mx')],
      delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, dnsServers: [dns.address] },
    }),
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
  await dns?.stop();
});

function nextHopLabels(text: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of text.matchAll(/postern_deliveries_total\{result="sent",next_hop="([^"]*)"\} (\d+)/g)) counts.set(m[1]!, Number(m[2]));
  return counts;
}

test('past 100 distinct next hops, deliveries are counted under next_hop="other"', async () => {
  for (let first = 0; first < DOMAINS; first += 50) {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@sender.test>')).code, 250);
    for (const d of domains.slice(first, first + 50)) assert.equal((await c.command(`RCPT TO:<u@${d}>`)).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    assert.equal((await c.command('Subject: hops\r\n\r\nhello\r\n.')).code, 250);
    await c.quit();
  }
  await sink.waitFor(DOMAINS);
  await until('every delivery counted', async () => {
    const labels = nextHopLabels(await registry.getSingleMetricAsString('postern_deliveries_total'));
    return [...labels.values()].reduce((a, b) => a + b, 0) >= DOMAINS;
  });
  const labels = nextHopLabels(await registry.getSingleMetricAsString('postern_deliveries_total'));
  assert.equal(labels.size, 101, [...labels.keys()].join(' '));
  assert.equal(labels.get('other'), DOMAINS - 100);
  assert.ok([...labels.keys()].every((k) => k === 'other' || /^mx\d+\.test:\d+$/.test(k)));
});
