// A client that talks before the greeting gets `421 4.5.0 <hostname> You talk too soon`, an enhanced code whatever
// command it sent (smtp-server wrote none to an early EHLO), and its decision line names what held the greeting back:
// limits.greetingDelayMs during the delay, the checks of the connection otherwise. A client that sends EHLO with its
// PROXY header, on a listener without a greeting delay, was logged as refused by limits.greetingDelayMs, which was 0.
// Real server, real sockets.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import dns from 'node:dns';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { proxyV1 } from '../helpers/proxy-header.ts';
import { until } from '../helpers/wait.ts';
import { startDnsServer, ptrName, type TestDnsServer } from '../helpers/dns-server.ts';
import { metrics } from '../../engine/metrics/metrics.ts';

let s: TestServer;
let zone: TestDnsServer;
before(async () => {
  // The reverse lookup of the proxied client takes its time (a resolver that must ask elsewhere): the greeting waits for it.
  zone = await startDnsServer({ [ptrName('192.0.2.44')]: [{ type: 'PTR', value: 'client.example' }] });
  zone.recursing.set(ptrName('192.0.2.44'), 3000);
  dns.setServers([zone.address]);
  s = await startTestServer({
    config: `
hostname: mx.test
localDomains: [example.test]
listeners:
  - { name: paused, listen: "127.0.0.1:0", reverseDns: false, tls: { mode: none }, limits: { greetingDelayMs: 60000 } }
  - { name: proxied, listen: "127.0.0.1:0", reverseDns: true, tls: { mode: none }, proxyProtocol: { trusted: [127.0.0.0/8] }, limits: { greetingDelayMs: 0 } }
`,
  });
});
after(async () => {
  await s?.stop();
  await zone?.stop();
});

async function refusalLine(listener: string): Promise<Record<string, unknown>> {
  await until('its decision line', () => s.logs.some((l) => l.decision !== undefined && l.listener === listener), { timeoutMs: 30_000 });
  return s.logs.find((l) => l.decision !== undefined && l.listener === listener)!;
}

test('EHLO during the greeting delay: 421 4.5.0, the line names limits.greetingDelayMs', { timeout: 120_000 }, async () => {
  const c = await SmtpTestClient.connect(s.port('paused'));
  try {
    c.socket.write('EHLO early.example\r\n');
    assert.equal((await c.read(60_000)).text, '421 4.5.0 mx.test You talk too soon');
    const line = await refusalLine('paused');
    assert.deepEqual([line.decision, line.stage, line.code, line.enhanced], ['defer', 'CONNECT', 421, '4.5.0']);
    assert.equal(line.reason, 'limits.greetingDelayMs: the client talked before the greeting');
  } finally { c.destroy(); }
});

test('EHLO sent with the PROXY header, no greeting delay, the reverse lookup under way: 421 4.5.0, the line names the checks, not greetingDelayMs', { timeout: 120_000 }, async () => {
  const raw = net.connect(s.port('proxied'), '127.0.0.1');
  raw.on('error', () => undefined);
  raw.write(`${proxyV1('192.0.2.44', 40000)}EHLO early.example\r\n`);
  let got = '';
  raw.on('data', (d: Buffer) => { got += d.toString('latin1'); });
  await new Promise((r) => raw.once('close', r));
  assert.equal(got, '421 4.5.0 mx.test You talk too soon\r\n');
  const line = await refusalLine('proxied');
  assert.deepEqual([line.decision, line.stage, line.code, line.enhanced, line.client], ['defer', 'CONNECT', 421, '4.5.0', '192.0.2.44']);
  assert.doesNotMatch(String(line.reason), /greetingDelayMs/);
  assert.equal(line.reason, 'the checks of its connection (reverse lookup, connection limits, connect script): the client talked before the greeting');
  // Both are connections refused for talking first.
  const refused = (await metrics.connectionsRefused.get()).values.filter((v) => v.labels.reason === 'greeting-pause');
  assert.deepEqual(refused.map((v) => [v.labels.listener, v.value]).sort(), [['paused', 1], ['proxied', 1]]);
});
