/**
 * postern_deliveries_total's next_hop label is where mail went, which the operator does not bound: MX routing
 * goes wherever recipient domains (or a bounce's sender domain) point, and whoever controls that DNS names as
 * many hosts and addresses as it likes. Every distinct value was a series kept for the process's life (and in
 * every scrape). Here a predelivery script sends 150 domains to 150 next hops: the metric keeps at most 100
 * of them, the rest count as `other`, nothing is lost from the totals, and the label names the host and port
 * (not each address of the host).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { freePort } from '../helpers/free-port.ts';

const DOMAINS = 150;

test('next_hop takes at most 100 values; the rest count as other', { timeout: 120_000 }, async () => {
  // Next hops 127.77.0.1 … 127.77.0.150, one port: nothing listens there, each attempt is deferred. (Ports base+1 …
  // base+150 on 127.0.0.1 were 150 ports assumed free: under load another test's server took one, and its attempt
  // was answered.) Linux answers every 127/8 address as loopback.
  const base = await freePort();
  const domains = Array.from({ length: DOMAINS }, (_, n) => `d${n}.example`);
  const s = await startDeliveryServer({
    config: configYaml({
      localDomains: domains,
      admin: { listen: '127.0.0.1:0' },
      listeners: [testListener('mx', { limits: { maxRecipients: 200 } })],
      delivery: { enabled: true, route: { smarthost: { host: '127.0.0.1', port: base } }, tls: { mode: 'none' }, retrySchedule: [3600], connectTimeoutMs: 5000 },
    }),
    scripts: {
      'predelivery.ts': `export default function predelivery(ctx: PredeliveryContext): PredeliveryVerdict {
  return deliver({ host: '127.77.0.' + (1 + Number(/^d(\\d+)\\./.exec(ctx.destination.domain)![1])), port: ${base} });
}`,
    },
  });
  try {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    const r = await c.sendMail('a@sender.example', domains.map((d) => `user@${d}`), 'Subject: many hops\r\n\r\nx\r\n');
    assert.equal(r.code, 250, r.text);
    await c.quit();
    const attempt = await s.nextAttempt((e) => e.outcomes.length === DOMAINS, { past: true });
    assert.ok(attempt.outcomes.every((o) => o.status === 'temporary'), 'deferred: nothing listens there');

    const samples = [...(await scrapeMetrics(s.admin!.address.port))].filter(([k]) => k.startsWith('postern_deliveries_total{'));
    const hops = samples.map(([k]) => /next_hop="([^"]*)"/.exec(k)![1]!);
    assert.ok(hops.length <= 101, `${hops.length} series`);
    assert.ok(hops.includes('other'), 'the rest counted as other');
    assert.ok(hops.includes(`127.77.0.1:${base}`), `host and port: ${hops.slice(0, 3).join(' ')}`);
    assert.equal(samples.reduce((sum, [, v]) => sum + v, 0), DOMAINS, 'every outcome counted');
  } finally {
    await s.stop();
  }
});
