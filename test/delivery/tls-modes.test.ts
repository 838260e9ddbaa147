// Outbound TLS modes (Postfix smtp_tls_security_level) against next hops without STARTTLS, with a self-signed
// certificate, with a CA-issued one (STARTTLS and implicit TLS), and with one that breaks the handshake.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { selfSignedServer } from './helpers/self-signed.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';

let pki: TestPki;
let tmp: string;
const sinks: Record<string, Sink> = {};
let s: DeliveryServer;
/** A Postern listener that requires a client certificate: the handshake completes, then EHLO gets 421 4.7.1. */
let requiring: TestServer;

before(async () => {
  pki = await makeTestPki();
  tmp = await mkdtemp(join(tmpdir(), 'postern-tls-modes-'));
  const self = await selfSignedServer('localhost');
  await writeFile(join(tmp, 'self.crt'), self.cert);
  await writeFile(join(tmp, 'self.key'), self.key);
  sinks.plain = await startSink();
  sinks.selfsigned = await startSink({ tls: 'starttls', cert: join(tmp, 'self.crt'), key: join(tmp, 'self.key') });
  sinks.valid = await startSink({ tls: 'starttls', cert: pki.server.cert, key: pki.server.key });
  sinks.implicit = await startSink({ tls: 'implicit', cert: pki.server.cert, key: pki.server.key });
  // Demands a client certificate during the handshake: TLS fails for a client without one.
  sinks.broken = await startSink({ tls: 'starttls', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert, requireClientCertificate: true });
  requiring = await startTestServer({
    config: configYaml({ listeners: [testListener('in', { tls: testServerTls(pki, { clientCertificates: 'require' }) })] }),
  });
  const ports = { ...Object.fromEntries(Object.entries(sinks).map(([k, v]) => [k, v.port])), requiring: requiring.port('in') };
  s = await startDeliveryServer({
    config: configYaml({
      sandbox: { timeoutMs: 1000 },
      listeners: [testListener('in')],
      delivery: {
        enabled: true, route: { smarthost: { host: '127.0.0.1', port: 9 } }, retrySchedule: [3600],
        caFiles: { 'test-ca': pki.ca.cert }, connectTimeoutMs: 5000,
      },
    }),
    scripts: {
      'rcptto.ts': `export default () => accept();`,
      // Recipient domain <mode>.<server>[.<servername>].test picks the TLS mode and the next hop.
      'predelivery.ts': `
const PORTS: Record<string, number> = ${JSON.stringify(ports)};
export default function predelivery(ctx: PredeliveryContext): PredeliveryVerdict | void {
  const [mode, server, name] = ctx.destination.domain.split('.');
  const tls: DeliveryTls = { mode: mode as DeliveryTls['mode'] };
  if (mode === 'verify') tls.ca = 'test-ca';
  if (name !== 'test') tls.serverName = name;
  return deliver({ host: '127.0.0.1', port: PORTS[server], implicitTls: server === 'implicit', tls });
}
`,
    },
  });
});
after(async () => {
  await s?.stop();
  for (const k of Object.values(sinks)) await k.close();
  await requiring?.stop();
  await rm(tmp, { recursive: true, force: true });
});

/** Send to r@<domain> and wait for the first attempt's outcome. */
async function attempt(domain: string): Promise<{ status: string; reply: string; received: ReturnType<Sink['messages']['at']> }> {
  const id = await s.send('sender@example.org', [`r@${domain}`]);
  const e = await s.nextAttempt((x) => x.id === id, { past: true });
  const server = domain.split('.')[1]!;
  const received = sinks[server]?.messages.find((m) => m.to[0] === `r@${domain}`);
  return { status: e.outcomes[0]!.status, reply: e.outcomes[0]!.reply, received };
}

test('none: plaintext even where STARTTLS is offered', async () => {
  for (const server of ['plain', 'selfsigned', 'valid']) {
    const r = await attempt(`none.${server}.test`);
    assert.equal(r.status, 'delivered', `${server}: ${r.reply}`);
    assert.equal(r.received?.tls, false, server);
  }
});

test('may: STARTTLS when offered (certificate unchecked), plaintext otherwise, and plaintext again when the handshake fails', async () => {
  const plain = await attempt('may.plain.test');
  assert.equal(plain.status, 'delivered');
  assert.equal(plain.received?.tls, false);
  for (const server of ['selfsigned', 'valid']) {
    const r = await attempt(`may.${server}.test`);
    assert.equal(r.status, 'delivered', `${server}: ${r.reply}`);
    assert.equal(r.received?.tls, true, server);
  }
  const broken = await attempt('may.broken.test');
  assert.equal(broken.status, 'delivered', broken.reply);
  assert.equal(broken.received?.tls, false, 'retried in plaintext after the failed handshake');
  assert.ok(s.logs.some((l) => l.msg === 'TLS failed in may mode, retrying without TLS'));
});

test('encrypt: TLS required but not verified; a next hop without STARTTLS is retried later', async () => {
  const plain = await attempt('encrypt.plain.test');
  assert.equal(plain.status, 'temporary');
  assert.match(plain.reply, /TLS failed/);
  assert.equal(plain.received, undefined);
  for (const server of ['selfsigned', 'valid']) {
    const r = await attempt(`encrypt.${server}.test`);
    assert.equal(r.status, 'delivered', `${server}: ${r.reply}`);
    assert.equal(r.received?.tls, true);
  }
  const broken = await attempt('encrypt.broken.test');
  assert.equal(broken.status, 'temporary', 'no plaintext fallback in encrypt mode');
});

test('verify: CA and host name checked; self-signed, wrong name and no STARTTLS are retried later', async () => {
  for (const server of ['plain', 'selfsigned']) {
    const r = await attempt(`verify.${server}.test`);
    assert.equal(r.status, 'temporary', server);
    assert.match(r.reply, /TLS failed/, server);
  }
  assert.match((await attempt('verify.selfsigned.test')).reply, /self.signed/i);
  const byAddress = await attempt('verify.valid.test');
  assert.equal(byAddress.status, 'delivered', `IP SAN 127.0.0.1: ${byAddress.reply}`);
  assert.equal(byAddress.received?.tls, true);
  const byName = await attempt('verify.valid.localhost.test');
  assert.equal(byName.status, 'delivered', byName.reply);
  assert.equal(byName.received?.servername, 'localhost', 'SNI is the server name');
  const wrongName = await attempt('verify.valid.mail-example.test');
  assert.equal(wrongName.status, 'temporary');
  assert.match(wrongName.reply, /mail-example/);
  const implicit = await attempt('verify.implicit.localhost.test');
  assert.equal(implicit.status, 'delivered', implicit.reply);
  assert.equal(implicit.received?.tls, true);
  const ids = (await s.runtime.spool.list()).length;
  assert.ok(ids >= 5, 'deferred messages stay in the spool');
});

test('a server that refuses after the handshake (421 4.7.1, no client certificate) is its reply, not a TLS failure', async () => {
  for (const mode of ['may', 'encrypt']) {
    const r = await attempt(`${mode}.requiring.test`);
    assert.equal(r.status, 'temporary', `${mode}: ${r.reply}`);
    assert.match(r.reply, /refused.*421 4\.7\.1/, mode);
    assert.doesNotMatch(r.reply, /TLS failed/, mode);
  }
  const retried = s.logs.filter((l) => l.msg === 'TLS failed in may mode, retrying without TLS' && String(l.remote).includes(`:${requiring.port('in')}`));
  assert.deepEqual(retried, [], 'no plaintext retry: the server answered');
});
