// postern_smtp_connections_refused_total counts every connection refused at connect, once, under the limit or
// rule that refused it: those answered 421 (the listener's and the address's connection limits, the connection
// rate, the auth-failure block, a client that talks before the greeting) and those closed unanswered before
// any SMTP (over twice the per-address limit before TLS, over the rate before TLS, a PROXY header from an
// untrusted address or one that does not parse), and on an implicit-TLS listener, where the handshake comes
// before the greeting, a client certificate refused there (tls.clientCertificates: require answers 421, tls.strict
// closes unanswered). A flood an administrator should see is never left uncounted.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { clientTlsOptions, makeTestPki } from '../helpers/pki.ts';
import type { TlsClientOptions } from '../helpers/smtp-client.ts';
import { closed, until } from '../helpers/wait.ts';
import { metrics } from '../../engine/metrics/metrics.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';

let server: TestServer;
let ca: string;
let stranger: TlsClientOptions;

before(async () => {
  const pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  const smtps = { mode: 'implicit' as const, cert: pki.server.cert, key: pki.server.key };
  // A certificate of another CA: neither verified nor pinned.
  stranger = { ...await clientTlsOptions(pki, 'stranger'), ca };
  const asking = { ...smtps, caFiles: [pki.ca.cert] };
  server = await startTestServer({
    files: { users: `alice@example.com:${await hashPassword('alice-Secret-1')}\n` },
    config: configYaml({
      localDomains: ['example.test'],
      users: './users',
      listeners: [
        testListener('cap', { tls: { mode: 'none' }, limits: { maxConnections: 1 } }),
        testListener('perip', { tls: { mode: 'none' }, limits: { maxConnectionsPerIp: 1 } }),
        testListener('rate', { tls: { mode: 'none' }, limits: { connectionRatePerIp: { count: 1, windowSeconds: 3600 } } }),
        testListener('early', { tls: { mode: 'none' }, limits: { greetingDelayMs: 60_000 } }),
        testListener('authlimit', { tls: { mode: 'none' }, auth: { mechanisms: ['PLAIN'] }, limits: { authFailuresPerIp: 1, authFailuresBeforeDelay: 1000 } }),
        testListener('smtps-perip', { tls: smtps, limits: { maxConnectionsPerIp: 1 } }),
        testListener('smtps-rate', { tls: smtps, limits: { connectionRatePerIp: { count: 1, windowSeconds: 3600 } } }),
        testListener('smtps-require', { tls: { ...asking, clientCertificates: 'require' } }),
        testListener('smtps-strict', { tls: { ...asking, clientCertificates: 'request', strict: true } }),
        testListener('starttls-strict', { tls: { ...asking, mode: 'starttls', clientCertificates: 'request', strict: true } }),
        testListener('untrusted', { tls: { mode: 'none' }, proxyProtocol: { trusted: ['10.0.0.0/8'] } }),
        testListener('proxied', { tls: { mode: 'none' }, proxyProtocol: { trusted: ['127.0.0.0/8'] } }),
      ],
    }),
  });
});

after(() => server?.stop());

/** Every series of the counter for `listener`, by reason. */
async function refused(listener: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await metrics.connectionsRefused.get()).values) if (v.labels.listener === listener) out[String(v.labels.reason)] = v.value;
  return out;
}

/** postern_smtp_refusals_total's series for `listener`, as `stage class reason`. */
function refusals(listener: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of metrics.refusals.get().values) if (v.labels.listener === listener) out[`${v.labels.stage} ${v.labels.class} ${v.labels.reason}`] = v.value;
  return out;
}

/** A plain connection; its first reply. */
async function greeting(listener: string, localAddress?: string): Promise<{ c: SmtpTestClient; code: number }> {
  const c = await SmtpTestClient.connect(server.port(listener), localAddress ? { localAddress } : {});
  return { c, code: (await c.read()).code };
}

/** A TCP connection the server closes unanswered: resolves once it is closed. */
async function closedUnanswered(listener: string, data?: string): Promise<void> {
  const s = net.connect(server.port(listener), '127.0.0.1');
  s.on('error', () => undefined);
  let got = '';
  s.on('data', (d: Buffer) => { got += d.toString(); });
  if (data !== undefined) s.write(data);
  await closed(s);
  assert.equal(got, '', 'no reply');
}

/** One connection held (greeted), one more refused with 421. */
async function oneOver(listener: string): Promise<void> {
  const held = await greeting(listener);
  assert.equal(held.code, 220);
  const over = await greeting(listener);
  assert.equal(over.code, 421);
  held.c.destroy();
  over.c.destroy();
}

/**
 * `refusals`: what postern_smtp_refusals_total counts of it (a command's refusal: none for a connection closed
 * before any SMTP; one at CONNECT for the 421 in place of the greeting, and for tls.strict's close on implicit TLS,
 * which stands for its 421 4.7.1).
 */
const ROWS: Array<{ listener: string; reason: string; refusals: Record<string, number>; drive(): Promise<void> }> = [
  { listener: 'cap', reason: 'max-connections', refusals: { 'CONNECT 4xx limits.maxConnections': 1 }, drive: () => oneOver('cap') },
  { listener: 'perip', reason: 'per-ip-limit', refusals: { 'CONNECT 4xx limits.maxConnectionsPerIp': 1 }, drive: () => oneOver('perip') },
  {
    listener: 'rate', reason: 'connection-rate', refusals: { 'CONNECT 4xx limits.connectionRatePerIp': 1 },
    async drive() {
      const first = await greeting('rate');
      assert.equal(first.code, 220);
      first.c.destroy();
      const over = await greeting('rate');
      assert.equal(over.code, 421);
      over.c.destroy();
    },
  },
  {
    listener: 'early', reason: 'greeting-pause', refusals: { 'CONNECT 4xx limits.greetingDelayMs: the client talked before the greeting': 1 },
    async drive() {
      const c = await SmtpTestClient.connect(server.port('early'));
      c.socket.write('EHLO early.example\r\n');
      assert.equal((await c.read(60_000)).code, 421);
      c.destroy();
    },
  },
  {
    listener: 'authlimit', reason: 'auth-failures', refusals: { 'AUTH 5xx authentication failed': 1, 'CONNECT 4xx limits.authFailuresPerIp': 1 },
    async drive() {
      const first = await greeting('authlimit', '127.0.0.7');
      await first.c.command('EHLO client.example');
      assert.equal((await first.c.command(`AUTH PLAIN ${Buffer.from('\0alice@example.com\0wrong').toString('base64')}`)).code, 535);
      await first.c.quit();
      const again = await greeting('authlimit', '127.0.0.7');
      assert.equal(again.code, 421);
      again.c.destroy();
    },
  },
  {
    listener: 'smtps-perip', reason: 'per-ip-limit', refusals: {},
    async drive() {
      // Two held without a handshake (one over the limit may still read its 421 after TLS); the third is closed before TLS.
      const held = [net.connect(server.port('smtps-perip'), '127.0.0.1'), net.connect(server.port('smtps-perip'), '127.0.0.1')];
      for (const h of held) h.on('error', () => undefined);
      await Promise.all(held.map((h) => new Promise((resolve) => h.once('connect', resolve))));
      await closedUnanswered('smtps-perip');
      for (const h of held) h.destroy();
      await Promise.all(held.map((h) => closed(h)));
    },
  },
  {
    listener: 'smtps-rate', reason: 'connection-rate', refusals: {},
    async drive() {
      const first = await SmtpTestClient.connect(server.port('smtps-rate'), { implicitTls: { ca, servername: 'localhost' } });
      assert.equal((await first.read()).code, 220);
      first.destroy();
      await closedUnanswered('smtps-rate');
    },
  },
  {
    listener: 'smtps-require', reason: 'client-certificate', refusals: { 'CONNECT 4xx tls.clientCertificates: require': 1 },
    async drive() {
      const c = await SmtpTestClient.connect(server.port('smtps-require'), { implicitTls: { ca, servername: 'localhost' } });
      assert.equal((await c.read()).text, '421 4.7.1 No client certificate presented');
      c.destroy();
    },
  },
  {
    listener: 'smtps-strict', reason: 'client-certificate', refusals: { 'CONNECT 4xx tls.strict: untrusted client certificate': 1 },
    async drive() {
      const c = await SmtpTestClient.connect(server.port('smtps-strict'), { implicitTls: stranger }).catch(() => null);
      if (c) await c.waitClosed();
    },
  },
  { listener: 'untrusted', reason: 'untrusted-proxy', refusals: {}, drive: () => closedUnanswered('untrusted') },
  { listener: 'proxied', reason: 'proxy-header', refusals: {}, drive: () => closedUnanswered('proxied', 'NOT A PROXY HEADER\r\n') },
];

for (const row of ROWS) {
  test(`${row.listener}: one refused connection counted once, as ${row.reason}`, { timeout: 90_000 }, async () => {
    const before = await refused(row.listener);
    const refusalsBefore = refusals(row.listener);
    const mark = server.logs.length;
    await row.drive();
    const after = await refused(row.listener);
    const moved = Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, d]) => d !== 0));
    assert.deepEqual(moved, { [row.reason]: 1 });
    const refusalsMoved = Object.fromEntries(Object.entries(refusals(row.listener)).map(([k, v]) => [k, v - (refusalsBefore[k] ?? 0)]).filter(([, d]) => d !== 0));
    assert.deepEqual(refusalsMoved, row.refusals);
    // Its decision line (written as it is refused); a client's doing is never a warning or an error.
    await until('its decision line', () => server.logs.slice(mark).some((l) => l.decision === 'reject' || l.decision === 'defer'));
    assert.deepEqual(server.logs.slice(mark).filter((l) => Number(l.level) >= 40).map((l) => l.msg), []);
  });
}

test('tls.strict after STARTTLS: the close is one refusal at STARTTLS under its reason, not a refused connection', { timeout: 90_000 }, async () => {
  const listener = 'starttls-strict';
  const before = await refused(listener);
  const refusalsBefore = refusals(listener);
  const mark = server.logs.length;
  const c = await SmtpTestClient.connect(server.port(listener));
  assert.equal((await c.read()).code, 220);
  assert.equal((await c.command('EHLO client.example')).code, 250);
  await c.starttls(stranger).catch(() => undefined);
  await c.waitClosed();
  await until('its decision line', () => server.logs.slice(mark).some((l) => l.decision === 'defer'));
  const moved = Object.fromEntries(Object.entries(refusals(listener)).map(([k, v]) => [k, v - (refusalsBefore[k] ?? 0)]).filter(([, d]) => d !== 0));
  assert.deepEqual(moved, { 'STARTTLS 4xx tls.strict: untrusted client certificate': 1 });
  assert.deepEqual(await refused(listener), before, 'the connection was taken: refused at STARTTLS, not at connect');
});
