/**
 * An IPv6 client is counted by its network (limits.ipv6PrefixLength, default /64), not by its address: a host
 * with a /64 could otherwise open maxConnectionsPerIp connections, and make authFailuresPerIp guesses, from
 * each of its addresses. The clients' addresses come in PROXY headers (the test is the trusted balancer), so
 * several IPv6 addresses can be tried on loopback.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { proxyV1, proxyV2 } from '../helpers/proxy-header.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { countedAddress } from '../../engine/connection-limits/counted-address.ts';
import { INVALID, TOO_MANY, plain } from '../auth/helpers/submission.ts';
import { startCluster, ROUND_ROBIN, TWO_WORKERS } from '../helpers/cluster.ts';

const TOO_MANY_CONNECTIONS = '421 4.7.0 Too many connections from your address';

let pki: TestPki;
let ca: string;
let server: TestServer;

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  const tls = `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }`;
  server = await startTestServer({
    config: `
localDomains: [example.com]
users: ./users
listeners:
  - name: net64
    listen: 127.0.0.1:0
    reverseDns: false
    tls: ${tls}
    proxyProtocol: { trusted: [127.0.0.0/8] }
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1 }
  - name: each
    listen: 127.0.0.1:0
    reverseDns: false
    tls: ${tls}
    proxyProtocol: { trusted: [127.0.0.0/8] }
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1, ipv6PrefixLength: 128 }
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: ${tls}
    proxyProtocol: { trusted: [127.0.0.0/8] }
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 2, authFailuresBeforeDelay: 100 }
`,
    files: { users: `alice@example.com:${await hashPassword('alice-Secret-1')}\n` },
  });
});

after(async () => { await server?.stop(); });

/** A connection from `address` (through the balancer) and the first reply it gets. */
async function greeted(listener: string, address: string, port: number): Promise<{ client: SmtpTestClient; text: string }> {
  const client = await SmtpTestClient.connect(server.port(listener), { proxyHeader: port % 2 ? proxyV1(address, port, '::1') : proxyV2(address, port) });
  return { client, text: (await client.read()).text };
}

test('the counted address: an IPv6 network of the prefix length, an IPv4 address itself', () => {
  assert.equal(countedAddress('2001:db8:0:1:aa:bb:cc:dd', 64), '2001:db8:0:1::/64');
  assert.equal(countedAddress('2001:DB8::1', 48), '2001:db8::/48');
  assert.equal(countedAddress('2001:db8:abcd:12ff::1', 56), '2001:db8:abcd:1200::/56');
  assert.equal(countedAddress('2001:db8::1', 128), '2001:db8::1');
  assert.equal(countedAddress('192.0.2.1', 64), '192.0.2.1');
});

test('maxConnectionsPerIp: two addresses of one /64 share the limit, another /64 has its own; with 128 each address has its own', async () => {
  const first = await greeted('net64', '2001:db8:0:1::a', 2000);
  assert.match(first.text, /^220 /);
  const sameNetwork = await greeted('net64', '2001:db8:0:1:ffff:ffff:ffff:fffe', 2001);
  assert.equal(sameNetwork.text, TOO_MANY_CONNECTIONS);
  sameNetwork.client.destroy();
  const otherNetwork = await greeted('net64', '2001:db8:0:2::a', 2002);
  assert.match(otherNetwork.text, /^220 /);
  // The session and its logs still name the client's own address.
  assert.match((await first.client.command('EHLO client.example')).text, /^250-localhost Nice to meet you, \[2001:db8:0:1::a\]/);

  const a = await greeted('each', '2001:db8:0:1::a', 2003);
  const b = await greeted('each', '2001:db8:0:1::b', 2004);
  assert.match(a.text, /^220 /);
  assert.match(b.text, /^220 /);
  for (const c of [first.client, otherNetwork.client, a.client, b.client]) await c.quit();
});

test('authFailuresPerIp: guesses from several addresses of one /64 add up, and refuse the whole network at connect', async () => {
  for (const [address, port] of [['2001:db8:7::1', 3000], ['2001:db8:7::2', 3002]] as const) {
    const { client, text } = await greeted('sub', address, port);
    assert.match(text, /^220 /);
    await client.command('EHLO client.example');
    await client.starttls({ ca });
    await client.command('EHLO client.example');
    assert.equal((await client.command(plain('alice@example.com', `guess from ${address}`))).text, INVALID);
    await client.quit();
  }
  assert.equal(await server.runtime.authFailures.count('2001:db8:7::/64'), 2);
  const third = await greeted('sub', '2001:db8:7::3', 3004);
  assert.equal(third.text, TOO_MANY);
  third.client.destroy();
  // Another network is not affected, and the failure lines name each client's own address.
  const elsewhere = await greeted('sub', '2001:db8:8::1', 3006);
  assert.match(elsewhere.text, /^220 /);
  await elsewhere.client.quit();
  assert.ok(server.logs.some((l) => l.ip === '2001:db8:7::2' && l.msg === 'authentication failed'), 'the log names the address');
});

// Fill keeps an idle server's connections on its first worker: one worker shows the same there (its slots still the supervisor's).
for (const [choice, how, workers] of [[ROUND_ROBIN, 'two workers round robin (the supervisor hands connections over)', 2], ['', 'workerChoice fill (the workers accept themselves)', 1]] as const) test(`postern serve, ${how}: addresses of one /64 share maxConnectionsPerIp over the workers`, async () => {
  const c = await startCluster({
    config: `${TWO_WORKERS.replace('workers: 2', `workers: ${workers}`).replace('limits: { greetingDelayMs: 0 }', 'proxyProtocol: { trusted: [127.0.0.0/8] }\n    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }')}${choice}`,
  });
  const open: SmtpTestClient[] = [];
  try {
    // Round robin: the first two land on different workers; the supervisor counts for both (as it does for what workers accept).
    for (const [address, port] of [['2001:db8:5:1::1', 4000], ['2001:db8:5:1::2', 4002]] as const) {
      const client = await SmtpTestClient.connect(c.port('in'), { proxyHeader: proxyV2(address, port) });
      assert.match((await client.read()).text, /^220 /);
      open.push(client);
    }
    const third = await SmtpTestClient.connect(c.port('in'), { proxyHeader: proxyV2('2001:db8:5:1::3', 4004) });
    assert.equal((await third.read()).text, TOO_MANY_CONNECTIONS);
    third.destroy();
    const elsewhere = await SmtpTestClient.connect(c.port('in'), { proxyHeader: proxyV2('2001:db8:5:2::1', 4006) });
    assert.match((await elsewhere.read()).text, /^220 /);
    open.push(elsewhere);
  } finally {
    for (const client of open) client.destroy();
    await c.stop();
  }
});
