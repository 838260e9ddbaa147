/**
 * An MX record that leads back to this server (its own listener address and port, by name or through a
 * wildcard listener's loopback): the mail came in again and went out again, a new copy each hop, until the
 * hop count bounced it after 50 copies. It bounces at once now, 5.4.6 "loops back to myself", as in Postfix.
 * Where this server is a backup MX behind a better one that is down, it keeps the mail for it instead.
 * Reached another way (a port forward, a balancer in front of it: an address and port that are not its own), it is
 * told by the name the next hop gives itself in its EHLO reply: this server's hostname (as Postfix does).
 * Real DNS (a test server on loopback, delivery.dnsServers), real SMTP to the server's own listener, through a
 * real HAProxy for the forwarded case.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { greeted, startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { startDnsServer } from '../helpers/dns-server.ts';
import { needs } from '../helpers/example.ts';
import { HAPROXY, startHaproxy } from '../helpers/haproxy.ts';
import { useScratchDir } from '../helpers/scratch.ts';

/** DNS where `domain`'s MX is `mx` (at 127.0.0.1 unless `address`), and backup.test's is a primary that is down, then `mx`. */
function loopDns(domain: string, mx: string, address = '127.0.0.1'): ReturnType<typeof startDnsServer> {
  return startDnsServer({
    [domain]: [{ type: 'MX', value: { exchange: mx, priority: 10 } }],
    [mx]: [{ type: 'A', value: address }],
    // The primary is down (TEST-NET: no answer); we are the backup.
    'backup.test': [{ type: 'MX', value: { exchange: 'primary.backup.test', priority: 10 } }, { type: 'MX', value: { exchange: mx, priority: 20 } }],
    'primary.backup.test': [{ type: 'A', value: '192.0.2.1' }],
  });
}

/** One worker, listener `in` on `listen`, delivering by MX to port `routePort` through the DNS server at `dns`. */
function loopServer(opts: { top?: string; domains: string; listen: string; routePort: string; dns: string }): ReturnType<typeof startCluster> {
  return startCluster({
    config: `
workers: 1
${opts.top ?? ''}
localDomains: [${opts.domains}]
listeners:
  - name: in
    listen: ${opts.listen}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
delivery:
  route: { mx: true, port: ${opts.routePort} }
  dnsServers: ["${opts.dns}"]
  tls: { mode: none }
  scanIntervalMs: 200
  retrySchedule: [3600]
  connectTimeoutMs: 3000
`,
  });
}

/** A message to `to` through the server's listener: its queue id. */
async function sendTo(c: ClusterProcess, to: string): Promise<string> {
  const client = await greeted(c);
  const r = await client.sendMail('a@sender.test', [to], `Subject: to ${to}\r\n\r\nx\r\n`);
  await client.quit();
  assert.equal(r.code, 250, r.text);
  return /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
}

/** The first delivery line of message `id` that is not its queueing. */
function outcomeOf(c: ClusterProcess, id: string): Promise<Record<string, unknown>> {
  return c.waitFor('the delivery line', () => c.logs.find((l) => l.id === id && typeof l.status === 'string' && l.status !== 'queued'));
}

/** The messages the server accepted: a copy that came back in would be one more. */
function assertAccepted(c: ClusterProcess, count: number): void {
  const accepted = c.logs.filter((l) => /: accepted from=/.test(String(l.msg)));
  assert.equal(accepted.length, count, `no copy came back in: ${accepted.map((l) => l.msg).join('\n')}`);
}

test('an MX that is this server bounces at once (5.4.6); as a backup MX behind a better one that is down, mail waits', { timeout: 120_000 }, async () => {
  const dns = await loopDns('loop.test', 'mx.loop.test');
  const c = await loopServer({ domains: 'loop.test, backup.test', listen: '0.0.0.0:{PORT:in}', routePort: '{PORT:in}', dns: dns.address });
  try {
    const bounced = await outcomeOf(c, await sendTo(c, 'u@loop.test'));
    assert.equal(bounced.status, 'bounced', JSON.stringify(bounced));
    assert.match(String(bounced.reply), /^mail for loop\.test loops back to myself \(mx\.loop\.test\[127\.0\.0\.1\]:\d+\)$/, JSON.stringify(bounced));

    const deferred = await outcomeOf(c, await sendTo(c, 'v@backup.test'));
    assert.equal(deferred.status, 'deferred', JSON.stringify(deferred));
    assert.match(String(deferred.reply), /primary\.backup\.test\[192\.0\.2\.1\]/, 'the primary\'s failure');
    assertAccepted(c, 2);
  } finally {
    await c.stop();
    await dns.stop();
  }
});

test('an MX host whose address is 0.0.0.0 (a blackholed domain\'s) is this server too: bounced at once (5.4.6), no copy comes back in', { timeout: 120_000 }, async () => {
  // Connecting to the unspecified address reaches this machine (Linux takes it for loopback): the listener on
  // 127.0.0.1 took the mail again, a copy per hop, since 0.0.0.0 was not taken for one of its addresses.
  const dns = await loopDns('zero.test', 'mx.zero.test', '0.0.0.0');
  const c = await loopServer({ domains: 'zero.test', listen: '127.0.0.1:{PORT:in}', routePort: '{PORT:in}', dns: dns.address });
  try {
    const line = await outcomeOf(c, await sendTo(c, 'u@zero.test'));
    assert.equal(line.status, 'bounced', JSON.stringify(line));
    assert.match(String(line.reply), /^mail for zero\.test loops back to myself \(mx\.zero\.test\[0\.0\.0\.0\]:\d+\)$/);
    assertAccepted(c, 1);
  } finally {
    await c.stop();
    await dns.stop();
  }
});

test('an MX that forwards to this server (HAProxy in front: not its own address and port) greets with its hostname: bounced at once (5.4.6); as a backup MX, mail waits', { timeout: 120_000, ...needs(HAPROXY) }, async () => {
  const scratch = useScratchDir('postern-loop-forward-');
  const dns = await loopDns('fwd.test', 'mx.fwd.test');
  // {PORT:fwd} is HAProxy's, forwarding to the listener: the route's port is not one of the server's listeners.
  const c = await loopServer({ top: 'hostname: mx.fwd.test', domains: 'fwd.test, backup.test', listen: '127.0.0.1:{PORT:in}', routePort: '{PORT:fwd}', dns: dns.address });
  const haproxy = await startHaproxy(scratch.path, `global
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend forward
  bind 127.0.0.1:${c.port('fwd')}
  default_backend postern
backend postern
  server in 127.0.0.1:${c.port('in')}
`, 'forward');
  try {
    const bounced = await outcomeOf(c, await sendTo(c, 'u@fwd.test'));
    assert.equal(bounced.status, 'bounced', JSON.stringify(bounced));
    assert.match(String(bounced.reply), /^mail for fwd\.test loops back to myself \(mx\.fwd\.test\[127\.0\.0\.1\]:\d+ greets as mx\.fwd\.test, this server's hostname\)$/, JSON.stringify(bounced));

    const deferred = await outcomeOf(c, await sendTo(c, 'v@backup.test'));
    assert.equal(deferred.status, 'deferred', JSON.stringify(deferred));
    assert.match(String(deferred.reply), /primary\.backup\.test\[192\.0\.2\.1\]/, 'the primary\'s failure');
    // The loop was told at EHLO, before MAIL FROM: no copy came in through HAProxy.
    assertAccepted(c, 2);
  } finally {
    await haproxy.stop();
    await c.stop();
    await dns.stop();
  }
});
