// Metrics of one server process: refused connections, next hops' cardinality, the server certificate's expiry,
// failed TLS handshakes and the verdicts' generations. One file for what were several (one test process and one load
// of the engine instead of one each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, type TlsClientOptions } from '../helpers/smtp-client.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { clientTlsOptions, makeTestPki } from '../helpers/pki.ts';
import { closed, until } from '../helpers/wait.ts';
import { metrics } from '../../engine/metrics/metrics.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';
import { freePort } from '../helpers/free-port.ts';
import { issueServerCertificate } from '../../engine/certificates/index.ts';
import { mailFromReply, verdictScript } from '../reload/helpers.ts';
import { PolicyGeneration } from '../../engine/policy/generation.ts';

describe('connections-refused', () => {
  // postern_smtp_connections_refused_total counts every connection refused at connect, once, under the limit or
  // rule that refused it: those answered 421 (the listener's and the address's connection limits, the connection
  // rate, the auth-failure block, a client that talks before the greeting) and those closed unanswered before
  // any SMTP (over twice the per-address limit before TLS, over the rate before TLS, a PROXY header from an
  // untrusted address or one that does not parse), and on an implicit-TLS listener, where the handshake comes
  // before the greeting, a client certificate refused there (tls.clientCertificates: require answers 421, tls.strict
  // closes unanswered). A flood an administrator should see is never left uncounted.
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
});

describe('next-hop-cardinality', () => {
  /**
   * postern_deliveries_total's next_hop label is where mail went, which the operator does not bound: MX routing
   * goes wherever recipient domains (or a bounce's sender domain) point, and whoever controls that DNS names as
   * many hosts and addresses as it likes. Every distinct value was a series kept for the process's life (and in
   * every scrape). Here a predelivery script sends 150 domains to 150 next hops: the metric keeps at most 100
   * of them, the rest count as `other`, nothing is lost from the totals, and the label names the host and port
   * (not each address of the host).
   */
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
});

describe('server-certificate-expiry', () => {
  // postern_tls_certificate_not_after_timestamp_seconds: the server certificate a TLS listener serves, read by a
  // real TLS client, against the gauge. Renewed on disk and reloaded, the gauge follows; the files gone, the reload
  // is refused, the listener serves the certificate in force (ready), and the gauge still says when that one runs out:
  // what the alert on it needs, since nothing else tells that verifying clients will soon fail every handshake.
  const cleanup: Array<() => Promise<void>> = [];
  after(async () => {
    for (const f of cleanup.reverse()) await f().catch(() => undefined);
  });

  const SAMPLE = 'postern_tls_certificate_not_after_timestamp_seconds{listener="mx"}';

  test('the gauge is the notAfter of the certificate served; it follows a renewal, and stays on the one in force when a reload is refused', async () => {
    const pki = await makeTestPki();
    const dir = await mkdtemp(join(tmpdir(), 'postern-cert-expiry-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const cert = join(dir, 'server.crt');
    const key = join(dir, 'server.key');
    const issue = async (days: number): Promise<number> => {
      const notAfter = new Date(Math.floor(Date.now() / 1000 + days * 86400) * 1000);
      const leaf = await issueServerCertificate(pki.authorities.ca, { commonName: 'localhost', dnsNames: ['localhost'], keyType: 'ecdsa', notAfter });
      await writeFile(key, leaf.key, { mode: 0o600 });
      await writeFile(cert, leaf.cert);
      return notAfter.getTime() / 1000;
    };
    const soon = await issue(3);
    const s = await startTestServer({
      config: configYaml({ admin: { listen: '127.0.0.1:0' }, listeners: [testListener('mx', { tls: { mode: 'starttls', cert, key } })] }),
    });
    cleanup.push(() => s.stop());
    const port = s.admin!.address.port;
    /** The notAfter of the certificate the listener serves now, read off a real STARTTLS handshake (Unix seconds). */
    const served = async (): Promise<number> => {
      const c = await SmtpTestClient.connect(s.port('mx'));
      try {
        await c.read();
        await c.command('EHLO client.example');
        const secure = await c.starttls({ ca: await readFile(pki.ca.cert, 'utf8') });
        return Date.parse(secure.getPeerCertificate().valid_to) / 1000;
      } finally {
        c.destroy();
      }
    };
    assert.equal((await scrapeMetrics(port)).get(SAMPLE), soon);
    assert.equal(await served(), soon);

    const renewed = await issue(90);
    assert.equal((await s.reloader.reload('test')).ok, true);
    assert.equal((await scrapeMetrics(port)).get(SAMPLE), renewed);
    assert.equal(await served(), renewed);

    await rm(cert);
    await until('the reload is refused', async () => !(await s.reloader.reload('test')).ok);
    assert.equal((await scrapeMetrics(port)).get(SAMPLE), renewed, 'the certificate in force, not the file');
    assert.equal(await served(), renewed);
  });
});

describe('tls-handshake-failures', () => {
  // postern_tls_handshake_failures_total counts every inbound handshake that did not complete: one refused by
  // TLS (a bad ClientHello), and one not completed within limits.tlsHandshakeTimeoutMs (a client that opens the
  // handshake and stalls, on implicit TLS or after STARTTLS: the pattern of a slow handshake flood). Each once,
  // and logged as what it is, a client's failure: one line at info with the client's address, no stack trace
  // (on implicit TLS each was a `listener error` at error level with its stack, without the client).
  let s: TestServer;
  before(async () => {
    const pki = await makeTestPki();
    const limits = { tlsHandshakeTimeoutMs: 300 };
    s = await startTestServer({
      config: configYaml({
        listeners: [
          testListener('starttls', { tls: testServerTls(pki), limits }),
          testListener('implicit', { tls: { ...testServerTls(pki), mode: 'implicit' }, limits }),
        ],
      }),
    });
  });
  after(() => s?.stop());

  /** Drive `run`; the listener's failures counted meanwhile, and the log lines it left at info or above. */
  async function counted(listener: string, run: () => Promise<void>): Promise<{ failures: number; lines: Array<Record<string, unknown>> }> {
    const before = await failures(listener);
    const mark = s.logs.length;
    await run();
    // The close reaches the client as the server handles the failure: its line may follow in a later turn.
    await until('the failure\'s line', () => s.logs.slice(mark).some((l) => Number(l.level) >= 30));
    return { failures: (await failures(listener)) - before, lines: s.logs.slice(mark).filter((l) => Number(l.level) >= 30) };
  }

  function assertClientFailure(lines: Array<Record<string, unknown>>): void {
    assert.equal(lines.length, 1, JSON.stringify(lines));
    const line = lines[0]!;
    assert.equal(line.level, 30, JSON.stringify(line));
    assert.equal(line.client, '127.0.0.1');
    assert.doesNotMatch(JSON.stringify(line), /\\n\s+at /, 'no stack trace');
  }

  const failures = async (listener: string): Promise<number> =>
    (await metrics.tlsHandshakeFailures.get()).values.find((v) => v.labels.listener === listener)?.value ?? 0;

  /** A raw connection that writes `first` (if any) and then nothing: resolves once the server closes it. */
  async function stalled(port: number, first?: string): Promise<void> {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    if (first !== undefined) socket.write(first);
    await closed(socket);
  }

  for (const [name, first] of [
    ['not a ClientHello', 'EHLO client.example\r\n'],
    // A TLS record header announcing a ClientHello of 512 bytes, then silence.
    ['a ClientHello begun and never finished', '\x16\x03\x01\x02\x00'],
    ['nothing sent', undefined],
  ] as const) {
    test(`implicit TLS, ${name}: one failed handshake, one line at info`, { timeout: 60_000 }, async () => {
      const { failures: n, lines } = await counted('implicit', () => stalled(s.port('implicit'), first));
      assert.equal(n, 1);
      assertClientFailure(lines);
    });
  }

  test('STARTTLS, a handshake begun and never finished: one failed handshake, one line at info', { timeout: 60_000 }, async () => {
    const { failures: n, lines } = await counted('starttls', async () => {
      const c = await SmtpTestClient.connect(s.port('starttls'));
      await c.read();
      await c.command('EHLO client.example');
      assert.equal((await c.command('STARTTLS')).code, 220);
      c.socket.write('\x16\x03\x01\x02\x00');
      await closed(c.socket);
    });
    assert.equal(n, 1);
    assertClientFailure(lines);
  });

  test('implicit TLS, a client that closes at once (a port check): no failed handshake, no warning or error', { timeout: 60_000 }, async () => {
    const before = await failures('implicit');
    const mark = s.logs.length;
    const socket = net.connect(s.port('implicit'), '127.0.0.1', () => socket.end());
    socket.on('error', () => undefined);
    await closed(socket);
    // The server handles the close after the client sees it: wait for the line it leaves, if any, by a connection after it.
    await stalled(s.port('implicit'));
    assert.equal(await failures('implicit') - before, 1, 'only the stalled one');
    const loud = s.logs.slice(mark).filter((l) => Number(l.level) >= 40);
    assert.deepEqual(loud.map((l) => l.msg), []);
  });
});

describe('verdict-generations', () => {
  // postern_script_verdicts_total has a generation label: each reload that changes something makes a new
  // generation, so the series of generations no longer running must go, or /metrics grows with every reload.
  test('20 reloads with a verdict each: only the running generation keeps verdict series', async () => {
    const s = await startTestServer({
      config: 'admin: { listen: "127.0.0.1:0" }\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0", limits: { greetingDelayMs: 0 } }\nsandbox: { isolates: 1 }\n',
      scripts: { 'mailfrom.js': verdictScript('v0') },
    });
    try {
      const first = s.runtime.generation.serial;
      for (let i = 1; i <= 20; i++) {
        await writeFile(join(s.dir, 'scripts', 'mailfrom.js'), verdictScript(`v${'i'.repeat(i)}`));
        // The file watcher may be reloading already: SIGHUP again until a session sees this version.
        await until(`version ${i} in force`, async () => {
          await s.reloader.reload('SIGHUP');
          return await mailFromReply(s) === `550 5.7.1 v${'i'.repeat(i)}`;
        });
      }
      await PolicyGeneration.allTornDown();
      assert.ok(s.runtime.generation.serial >= first + 20);
      const generations = async (): Promise<Set<string>> => new Set([...(await scrapeMetrics(s.admin!.address.port)).keys()]
        .filter((k) => k.startsWith('postern_script_verdicts_total{') && k.includes('hook="mailfrom"'))
        .map((k) => /generation="(\d+)"/.exec(k)![1]!)
        .filter((g) => Number(g) >= first)); // other tests' servers in this process are not ours
      // The last session's release of the previous generation may come a turn after its QUIT's reply; and the file
      // watcher's own reload of the last edit may come after the SIGHUP that put it in force (a generation without a
      // verdict yet): a verdict of the generation running now, then only its series.
      const only = async (): Promise<{ running: string; series: string[] }> => {
        await mailFromReply(s);
        return { running: String(s.runtime.generation.serial), series: [...await generations()] };
      };
      await until('old generations\' verdict series dropped', async () => {
        const { running, series } = await only();
        return series.length === 1 && series[0] === running;
      }, { timeoutMs: 10_000 }).catch(() => undefined);
      const { running, series } = await only();
      assert.deepEqual(series, [running]);
    } finally { await s.stop(); }
  });
});
