/**
 * limits.connectionRatePerIp (Postfix anvil's smtpd_client_connection_rate_limit): connections a client
 * makes, open or closed, within a window. maxConnectionsPerIp counts only open ones, so a client reconnecting
 * in a loop (a TLS handshake each time) was not bounded. Counted in the store: in one process, and under
 * `postern serve` over every worker (round robin puts consecutive connections on different workers). The
 * clients' addresses come in PROXY headers (the test is the trusted balancer), so several can be tried.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { proxyV2 } from '../helpers/proxy-header.ts';
import { startCluster, ROUND_ROBIN, TWO_WORKERS, type ClusterProcess } from '../helpers/cluster.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { readFile } from 'node:fs/promises';
import { metrics } from '../../engine/metrics/metrics.ts';

const REFUSED = /^421 4\.7\.0 Error: too many connections from (\S+), try again later$/;

/** A connection from `address` (through the balancer): its first reply, then closed. */
async function greeting(port: number, address: string, clientPort: number): Promise<string> {
  const c = await SmtpTestClient.connect(port, { proxyHeader: proxyV2(address, clientPort) });
  try {
    return (await c.read()).text;
  } finally {
    c.destroy();
  }
}

async function assertRateLimit(port: number): Promise<void> {
  for (let i = 0; i < 3; i++) assert.match(await greeting(port, '203.0.113.7', 5000 + i), /^220 /, `connection ${i + 1} of 3`);
  const refused = await greeting(port, '203.0.113.7', 5003);
  assert.match(refused, REFUSED);
  assert.equal(REFUSED.exec(refused)![1], '203.0.113.7');
  assert.match(await greeting(port, '203.0.113.8', 5004), /^220 /, 'another address has its own count');
  // An IPv6 client counts by its /64: three addresses of one network share the count.
  for (let i = 0; i < 3; i++) assert.match(await greeting(port, `2001:db8:7:1::${i + 1}`, 5010 + i), /^220 /);
  assert.match(await greeting(port, '2001:db8:7:1::99', 5020), REFUSED);
}

const LIMITS = 'proxyProtocol: { trusted: [127.0.0.0/8] }\n    limits: { greetingDelayMs: 0, connectionRatePerIp: { count: 3, windowSeconds: 3600 } }';

test('one process: the fourth connection within the window is refused, closed ones counted', async () => {
  const server = await startTestServer({
    config: `
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:0
    reverseDns: false
    ${LIMITS}
`,
  });
  try {
    await assertRateLimit(server.port('in'));
    const line = server.logs.find((l) => l.reason === 'limits.connectionRatePerIp');
    assert.ok(line, 'the refusal has its decision line');
  } finally {
    await server.stop();
  }
});

/** An implicit-TLS listener `smtps` on `listen` allowing 3 connections an hour per address (a `listeners:` item), and the CA its clients trust. */
async function implicitTlsRate(listen: string): Promise<{ listener: string; ca: string }> {
  const pki = await makeTestPki();
  const listener = `  - name: smtps
    listen: ${listen}
    reverseDns: false
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key} }
    limits: { greetingDelayMs: 0, connectionRatePerIp: { count: 3, windowSeconds: 3600 } }
`;
  return { listener, ca: await readFile(pki.ca.cert, 'utf8') };
}

/**
 * One `postern serve` (two workers, round robin) for the two tests of it, each on a listener of its own: `in` (its
 * clients named by PROXY headers) and `smtps`, whose clients come from 127.0.0.1 itself. The second test stops it.
 */
let served: Promise<{ c: ClusterProcess; ca: string }> | undefined;
after(async () => { await (await served?.catch(() => undefined))?.c.stop(); });
function servedCluster(): Promise<{ c: ClusterProcess; ca: string }> {
  served ??= (async () => {
    const { listener, ca } = await implicitTlsRate('127.0.0.1:{PORT:smtps}');
    return { c: await startCluster({ config: `${TWO_WORKERS.replace('limits: { greetingDelayMs: 0 }', LIMITS)}${listener}${ROUND_ROBIN}` }), ca };
  })();
  return served;
}

test('postern serve, two workers round robin: the count holds over both', async () => {
  const { c } = await servedCluster();
  await assertRateLimit(c.port('in'));
});

test('implicit TLS: a connection over the rate is closed before its handshake, not handshaken to read a 421', async () => {
  const { listener, ca } = await implicitTlsRate('127.0.0.1:0');
  const server = await startTestServer({ config: `localDomains: [example.test]\nlisteners:\n${listener}` });
  const handshakes = async () => (await metrics.tlsHandshakes.get()).values.filter((v) => v.labels.listener === 'smtps').reduce((n, v) => n + v.value, 0);
  try {
    const port = server.port('smtps');
    const before = await handshakes();
    const connect = (localAddress: string) => SmtpTestClient.connect(port, { implicitTls: { ca, servername: 'localhost' }, localAddress });
    for (let i = 0; i < 3; i++) {
      const c = await connect('127.0.0.1');
      assert.match((await c.read()).text, /^220 /, `connection ${i + 1} of 3`);
      c.destroy();
    }
    // Each of these was a full handshake (the server's CPU the limit is there to bound) to send a 421.
    for (let i = 0; i < 10; i++) await assert.rejects(connect('127.0.0.1'), `connection ${i + 4} is closed before TLS`);
    assert.equal(await handshakes() - before, 3, 'no handshake for a connection over the rate');
    const lines = server.logs.filter((l) => l.reason === 'limits.connectionRatePerIp: over the rate (closed before TLS)');
    assert.equal(lines.length, 10);
    assert.deepEqual([lines[0]!.decision, lines[0]!.stage, lines[0]!.client, lines[0]!.reply], ['reject', 'CONNECT', '127.0.0.1', null]);
    const other = await connect('127.0.0.2');
    assert.match((await other.read()).text, /^220 /, 'another address has its own count');
    other.destroy();
  } finally {
    await server.stop();
  }
});

test('postern serve, implicit TLS: over the rate counted over both workers, closed before the handshake', async () => {
  const { c, ca } = await servedCluster();
  try {
    const connect = () => SmtpTestClient.connect(c.port('smtps'), { implicitTls: { ca, servername: 'localhost' } });
    for (let i = 0; i < 3; i++) {
      const s = await connect();
      assert.match((await s.read()).text, /^220 /, `connection ${i + 1} of 3`);
      s.destroy();
    }
    for (let i = 0; i < 3; i++) await assert.rejects(connect(), `connection ${i + 4} is closed before TLS`);
    await c.waitFor('the three decision lines', () => c.logs.filter((l) => l.reason === 'limits.connectionRatePerIp: over the rate (closed before TLS)').length === 3);
  } finally {
    served = undefined;
    await c.stop();
  }
});
