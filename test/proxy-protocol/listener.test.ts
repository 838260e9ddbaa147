/**
 * A proxyProtocol listener in one process, with the header written by the test (v1 and v2): the client it
 * names is the one scripts, the per-address limit and the logs see; untrusted peers, garbage and a header
 * that never comes are closed; implicit TLS and STARTTLS work after the header. (HAProxy itself, in
 * front of `postern serve`, is test/proxy-protocol/haproxy.test.ts.)
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { closed, until } from '../helpers/wait.ts';
import { proxyV1, proxyV2 } from '../helpers/proxy-header.ts';

const CONNECT = `import type { ConnectContext } from "postern";
export default function (ctx: ConnectContext) {
  if (ctx.connection.remoteAddress === "192.0.2.99") return reject("No mail from " + ctx.connection.remoteAddress + " port " + ctx.connection.remotePort);
  if (ctx.connection.remoteAddress === "192.0.2.98") return reject("Connected to " + ctx.connection.localAddress + " port " + ctx.connection.localPort);
}
`;

let pki: TestPki;
let ca: string;
let server: TestServer;

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  const tls = (mode: string) => `{ mode: ${mode}, cert: ${pki.server.cert}, key: ${pki.server.key} }`;
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: ${tls('starttls')}
    proxyProtocol: { trusted: [127.0.0.0/8], headerTimeoutMs: 500 }
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }
  - name: smtps
    listen: 127.0.0.1:0
    tls: ${tls('implicit')}
    proxyProtocol: { trusted: ["127.0.0.1"], headerTimeoutMs: 1000 }
    limits: { greetingDelayMs: 0 }
  - name: elsewhere
    listen: 127.0.0.1:0
    proxyProtocol: { trusted: [10.0.0.0/8, "fd00::/8"] }
    limits: { greetingDelayMs: 0 }
  - name: rated
    listen: 127.0.0.1:0
    proxyProtocol: { trusted: [127.0.0.0/8] }
    limits: { greetingDelayMs: 0, connectionRatePerIp: { count: 2, windowSeconds: 3600 } }
`,
    scripts: { 'connect.ts': CONNECT },
  });
});

after(async () => { await server?.stop(); });

/** Resolves when the server closes the connection; with what it wrote first. */
async function closedWith(port: number, send?: Buffer | string): Promise<string> {
  const s = net.connect(port, '127.0.0.1');
  let got = '';
  s.on('data', (d: Buffer) => { got += d.toString(); });
  s.on('error', () => undefined);
  await once(s, 'connect');
  if (send !== undefined) s.write(send);
  await closed(s);
  return got;
}

test('v2 header: the session, its mail and its log line name the original client (STARTTLS after the header)', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: proxyV2('192.0.2.7', 40001) });
  assert.match((await c.hello({ starttls: { ca } })).text, /^250-localhost Nice to meet you, \[192\.0\.2\.7\]/);
  const queued = (await c.sendMail('a@example.org', ['b@example.com'])).text;
  assert.match(queued, /^250 2\.0\.0 Ok: queued as/);
  await c.quit();
  const spooled = (await server.runtime.spool.readMessage(/queued as ([0-9a-z]+)$/.exec(queued)![1]!)).toString('utf8');
  assert.match(spooled, /^Received: from client\.example \([^)]*\[192\.0\.2\.7\]\)/);
  await until('the accepted line is logged', () => server.logs.some((l) => /accepted from=<a@example\.org>/.test(String(l.msg))));
  const accepted = server.logs.find((l) => /accepted from=<a@example\.org>/.test(String(l.msg)))!;
  assert.match(String(accepted.msg), /client=[^\s]*\[192\.0\.2\.7\]/);
});

test('v1 header: scripts see the original address and port', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: proxyV1('192.0.2.99', 51234) });
  assert.equal((await c.read()).text, '554 5.7.1 No mail from 192.0.2.99 port 51234');
  c.destroy();
  // The decision line names the client too.
  await until('the refusal is logged', () => server.logs.some((l) => l.stage === 'CONNECT' && l.client === '192.0.2.99' && l.decision !== undefined));
  // The same client as an IPv4-mapped address in TCP6, its IPv4 part in hex: the IPv4 client scripts know.
  const mapped = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: 'PROXY TCP6 0:0:0:0:0:ffff:c000:0263 ::1 51235 25\r\n' });
  assert.equal((await mapped.read()).text, '554 5.7.1 No mail from 192.0.2.99 port 51235');
  mapped.destroy();
});

test('the address and port the client connected to are the ones the header names (the balancer\'s), as scripts are told', async () => {
  // They were the node's own: scripts choosing by the address or port a client reached (docs: "Address and
  // port the client connected to") saw the balancer's connection to the node instead. Postfix takes them from
  // the header too.
  const v2 = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: proxyV2('192.0.2.98', 1, { destination: '198.51.100.1', destinationPort: 587 }) });
  assert.equal((await v2.read()).text, '554 5.7.1 Connected to 198.51.100.1 port 587');
  v2.destroy();
  const v1 = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: 'PROXY TCP6 ::ffff:192.0.2.98 2001:DB8::1 2 25\r\n' });
  assert.equal((await v1.read()).text, '554 5.7.1 Connected to 2001:db8::1 port 25');
  v1.destroy();
  const mapped = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: 'PROXY TCP6 ::ffff:192.0.2.98 ::ffff:198.51.100.2 3 465\r\n' });
  assert.equal((await mapped.read()).text, '554 5.7.1 Connected to 198.51.100.2 port 465');
  mapped.destroy();
});

test('implicit TLS: the handshake follows the v2 header in the same write', async () => {
  const c = await SmtpTestClient.connect(server.port('smtps'), { proxyHeader: proxyV2('2001:db8::5', 4000), implicitTls: { ca } });
  await c.hello();
  assert.match((await c.sendMail('a@example.org', ['c@example.com'])).text, /^250 2\.0\.0 Ok: queued as/);
  await c.quit();
  await until('logged with the IPv6 client', () => server.logs.some((l) => /accepted from=<a@example\.org>.*\[2001:db8::5\]/.test(String(l.msg))));
});

test('implicit TLS: a failed handshake is logged with the client the header named', async () => {
  assert.equal(await closedWith(server.port('smtps'), Buffer.concat([proxyV2('192.0.2.77', 4001), Buffer.from('EHLO not-tls\r\n')])), '');
  await until('the handshake failure is logged', () => server.logs.some((l) => l.msg === 'client connection error' && l.listener === 'smtps' && l.client === '192.0.2.77'));
});

test('maxConnectionsPerIp counts the original client, not the balancer', async () => {
  const open: SmtpTestClient[] = [];
  for (let i = 0; i < 2; i++) {
    const c = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: proxyV2('192.0.2.50', 1000 + i) });
    assert.match((await c.read()).text, /^220 /);
    open.push(c);
  }
  const third = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: proxyV2('192.0.2.50', 1002) });
  assert.equal((await third.read()).text, '421 4.7.0 Too many connections from your address');
  third.destroy();
  // The same balancer, another client: welcome.
  const other = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: proxyV1('192.0.2.51', 1003) });
  assert.match((await other.read()).text, /^220 /);
  // A health check (v2 LOCAL) is the balancer itself.
  const local = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: proxyV2('192.0.2.50', 1, { local: true }) });
  assert.match((await local.read()).text, /^220 /);
  for (const c of [...open, other, local]) await c.quit();
  // Slots went back: 192.0.2.50 may connect again.
  await until('slots given back', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'), { proxyHeader: proxyV2('192.0.2.50', 1004) });
    const ok = (await c.read()).code === 220;
    c.destroy();
    return ok;
  });
});

test('connectionRatePerIp counts the clients a header names, not the balancer\'s own health checks (LOCAL, v1 UNKNOWN)', async () => {
  // Counted under the balancer's address, its checks (HAProxy's every 2 s by default, from each balancer) used
  // up that address's rate: the check then read 421, and the balancer took every node out of service. The
  // balancer is a trusted proxy, as Postfix's mynetworks are exempt from its anvil rate by default.
  const greeting = async (proxyHeader: Buffer | string): Promise<string> => {
    const c = await SmtpTestClient.connect(server.port('rated'), { proxyHeader });
    const text = (await c.read()).text;
    c.destroy();
    return text;
  };
  for (let i = 0; i < 4; i++) {
    assert.match(await greeting(proxyV2('192.0.2.60', 1, { local: true })), /^220 /, `health check ${i + 1} (v2 LOCAL)`);
    assert.match(await greeting('PROXY UNKNOWN\r\n'), /^220 /, `health check ${i + 1} (v1 UNKNOWN)`);
  }
  // A client the header names is still counted.
  assert.match(await greeting(proxyV2('192.0.2.61', 1)), /^220 /);
  assert.match(await greeting(proxyV2('192.0.2.61', 2)), /^220 /);
  assert.equal(await greeting(proxyV2('192.0.2.61', 3)), '421 4.7.0 Error: too many connections from 192.0.2.61, try again later');
});

test('an untrusted peer, a malformed header and a header that never comes: closed without a reply', async () => {
  assert.equal(await closedWith(server.port('elsewhere'), proxyV2('192.0.2.7', 1)), '');
  assert.equal(await closedWith(server.port('mx'), 'EHLO client.example\r\n'), '');
  assert.equal(await closedWith(server.port('mx'), 'PROXY TCP4 192.0.2.7 nowhere 1 25\r\n'), '');
  assert.equal(await closedWith(server.port('mx'), proxyV2('192.0.2.7', 1).subarray(0, 20)), ''); // then silence: the deadline
  assert.equal(await closedWith(server.port('smtps')), '');
  const reasons = server.logs.filter((l) => l.msg === 'PROXY protocol: connection closed').map((l) => String(l.reason));
  assert.ok(reasons.some((r) => /not a PROXY protocol header/.test(r)), reasons.join('; '));
  assert.ok(reasons.some((r) => /v1 address is not TCP4/.test(r)), reasons.join('; '));
  assert.ok(reasons.some((r) => /no PROXY header within 500 ms/.test(r)), reasons.join('; '));
  const untrusted = server.logs.find((l) => l.msg === 'PROXY protocol: connection from an untrusted address closed' && l.peer === '127.0.0.1');
  // Its reason names the key an operator edits (listeners[].proxyProtocol.trusted), not one the schema refuses.
  assert.equal(untrusted?.reason, 'listeners.proxyProtocol.trusted: not a trusted proxy');
  // Refusals without a reply are decisions too: found by the same query as the others.
  const closed = server.logs.filter((l) => String(l.msg).startsWith('PROXY protocol: connection'));
  assert.ok(closed.length >= 5);
  for (const l of closed) assert.deepEqual([l.decision, l.stage, l.client, typeof l.reason], ['reject', 'PROXY', '127.0.0.1', 'string'], JSON.stringify(l));
});
