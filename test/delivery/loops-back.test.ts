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
import { greeted, startCluster } from '../helpers/cluster.ts';
import { startDnsServer } from '../helpers/dns-server.ts';
import { needs } from '../helpers/example.ts';
import { HAPROXY, startHaproxy } from '../helpers/haproxy.ts';
import { useScratchDir } from '../helpers/scratch.ts';

test('an MX that is this server bounces at once (5.4.6); as a backup MX behind a better one that is down, mail waits', { timeout: 120_000 }, async () => {
  const dns = await startDnsServer({
    'loop.test': [{ type: 'MX', value: { exchange: 'mx.loop.test', priority: 10 } }],
    'mx.loop.test': [{ type: 'A', value: '127.0.0.1' }],
    // The primary is down (TEST-NET: no answer); we are the backup.
    'backup.test': [{ type: 'MX', value: { exchange: 'primary.backup.test', priority: 10 } }, { type: 'MX', value: { exchange: 'mx.loop.test', priority: 20 } }],
    'primary.backup.test': [{ type: 'A', value: '192.0.2.1' }],
  });
  const c = await startCluster({
    config: `
workers: 1
localDomains: [loop.test, backup.test]
listeners:
  - name: in
    listen: 0.0.0.0:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
delivery:
  route: { mx: true, port: {PORT:in} }
  dnsServers: ["${dns.address}"]
  tls: { mode: none }
  scanIntervalMs: 200
  retrySchedule: [3600]
  connectTimeoutMs: 3000
`,
  });
  try {
    const send = async (to: string): Promise<string> => {
      const client = await greeted(c);
      const r = await client.sendMail('a@sender.test', [to], `Subject: to ${to}\r\n\r\nx\r\n`);
      await client.quit();
      assert.equal(r.code, 250, r.text);
      return /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
    };
    const loop = await send('u@loop.test');
    const bounced = await c.waitFor('the delivery line', () => c.logs.find((l) => l.id === loop && l.status === 'bounced'));
    assert.match(String(bounced.reply), /^mail for loop\.test loops back to myself \(mx\.loop\.test\[127\.0\.0\.1\]:\d+\)$/, JSON.stringify(bounced));

    const backup = await send('v@backup.test');
    const deferred = await c.waitFor('the delivery line', () => c.logs.find((l) => l.id === backup && l.status === 'deferred'));
    assert.match(String(deferred.reply), /primary\.backup\.test\[192\.0\.2\.1\]/, 'the primary\'s failure');
    assert.ok(!c.logs.some((l) => l.id === backup && l.status === 'bounced'));

    const accepted = c.logs.filter((l) => /: accepted from=/.test(String(l.msg)));
    assert.equal(accepted.length, 2, `no copy came back in: ${accepted.map((l) => l.msg).join('\n')}`);
  } finally {
    await c.stop();
    await dns.stop();
  }
});

test('an MX host whose address is 0.0.0.0 (a blackholed domain\'s) is this server too: bounced at once (5.4.6), no copy comes back in', { timeout: 120_000 }, async () => {
  // Connecting to the unspecified address reaches this machine (Linux takes it for loopback): the listener on
  // 127.0.0.1 took the mail again, a copy per hop, since 0.0.0.0 was not taken for one of its addresses.
  const dns = await startDnsServer({
    'zero.test': [{ type: 'MX', value: { exchange: 'mx.zero.test', priority: 10 } }],
    'mx.zero.test': [{ type: 'A', value: '0.0.0.0' }],
  });
  const c = await startCluster({
    config: `
workers: 1
localDomains: [zero.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
delivery:
  route: { mx: true, port: {PORT:in} }
  dnsServers: ["${dns.address}"]
  tls: { mode: none }
  scanIntervalMs: 200
  retrySchedule: [3600]
  connectTimeoutMs: 3000
`,
  });
  try {
    const client = await greeted(c);
    const r = await client.sendMail('a@sender.test', ['u@zero.test'], 'Subject: to zero\r\n\r\nx\r\n');
    await client.quit();
    assert.equal(r.code, 250, r.text);
    const id = /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
    const line = await c.waitFor('the delivery line', () => c.logs.find((l) => l.id === id && typeof l.status === 'string' && l.status !== 'queued'));
    assert.equal(line.status, 'bounced', JSON.stringify(line));
    assert.match(String(line.reply), /^mail for zero\.test loops back to myself \(mx\.zero\.test\[0\.0\.0\.0\]:\d+\)$/);
    const accepted = c.logs.filter((l) => /: accepted from=/.test(String(l.msg)));
    assert.equal(accepted.length, 1, `no copy came back in: ${accepted.map((l) => l.msg).join('\n')}`);
  } finally {
    await c.stop();
    await dns.stop();
  }
});

test('an MX that forwards to this server (HAProxy in front: not its own address and port) greets with its hostname: bounced at once (5.4.6); as a backup MX, mail waits', { timeout: 120_000, ...needs(HAPROXY) }, async () => {
  const scratch = useScratchDir('postern-loop-forward-');
  const dns = await startDnsServer({
    'fwd.test': [{ type: 'MX', value: { exchange: 'mx.fwd.test', priority: 10 } }],
    'mx.fwd.test': [{ type: 'A', value: '127.0.0.1' }],
    'backup.test': [{ type: 'MX', value: { exchange: 'primary.backup.test', priority: 10 } }, { type: 'MX', value: { exchange: 'mx.fwd.test', priority: 20 } }],
    'primary.backup.test': [{ type: 'A', value: '192.0.2.1' }],
  });
  // {PORT:fwd} is HAProxy's, forwarding to the listener: the route's port is not one of the server's listeners.
  const c = await startCluster({
    config: `
workers: 1
hostname: mx.fwd.test
localDomains: [fwd.test, backup.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
delivery:
  route: { mx: true, port: {PORT:fwd} }
  dnsServers: ["${dns.address}"]
  tls: { mode: none }
  scanIntervalMs: 200
  retrySchedule: [3600]
  connectTimeoutMs: 3000
`,
  });
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
    const send = async (to: string): Promise<string> => {
      const client = await greeted(c);
      const r = await client.sendMail('a@sender.test', [to], `Subject: to ${to}\r\n\r\nx\r\n`);
      await client.quit();
      assert.equal(r.code, 250, r.text);
      return /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
    };
    const loop = await send('u@fwd.test');
    const bounced = await c.waitFor('the delivery line', () => c.logs.find((l) => l.id === loop && typeof l.status === 'string' && l.status !== 'queued'));
    assert.equal(bounced.status, 'bounced', JSON.stringify(bounced));
    assert.match(String(bounced.reply), /^mail for fwd\.test loops back to myself \(mx\.fwd\.test\[127\.0\.0\.1\]:\d+ greets as mx\.fwd\.test, this server's hostname\)$/, JSON.stringify(bounced));

    const backup = await send('v@backup.test');
    const deferred = await c.waitFor('the delivery line', () => c.logs.find((l) => l.id === backup && typeof l.status === 'string' && l.status !== 'queued'));
    assert.equal(deferred.status, 'deferred', JSON.stringify(deferred));
    assert.match(String(deferred.reply), /primary\.backup\.test\[192\.0\.2\.1\]/, 'the primary\'s failure');

    // The loop was told at EHLO, before MAIL FROM: no copy came in through HAProxy.
    const accepted = c.logs.filter((l) => /: accepted from=/.test(String(l.msg)));
    assert.equal(accepted.length, 2, `no copy came back in: ${accepted.map((l) => l.msg).join('\n')}`);
  } finally {
    await haproxy.stop();
    await c.stop();
    await dns.stop();
  }
});
