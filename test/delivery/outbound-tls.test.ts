// TLS towards the next hop: the client certificate presented or not, the TLS modes, the outbound files and the
// pool's keys. One file for what were several (one test process and one load of the engine instead of one each),
// each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile, mkdtemp, rm, copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { createPrivateKey } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { makeTestPki, type TestPki, type ClientName } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, parseDsn, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener, testServerTls } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { selfSignedServer } from './helpers/self-signed.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { issueClientCertificate } from '../../engine/certificates/index.ts';
import { ConnectionPool, type Endpoint } from '../../engine/delivery/connection-pool.ts';
import type { ConnectionSecurity } from '../../engine/delivery/outbound-tls.ts';
import { startRawSink } from '../helpers/raw-sink.ts';

describe('client-certificates', () => {
  // Delivery with TLS client certificates: the pre-delivery script picks one per sender domain, the next hop
  // (an smtp-server that verifies them) sees its fingerprint; without one, or with the wrong one, the mail is
  // refused, retried and finally bounced. Rotating a certificate's files changes the next connection.
  let pki: TestPki;
  let sink: Sink;
  let bounces: Sink;
  let s: DeliveryServer;

  /** Which certificate the next hop expects for each sender domain (a Postfix-style fingerprint table). */
  const expected: Record<string, ClientName[]> = {
    'alice.example': ['alice'], 'ed.example': ['ed25519'], 'ec.example': ['ecdsa'], 'stranger.example': ['stranger'],
  };

  before(async () => {
    pki = await makeTestPki();
    const fp = (c: ClientName): string => pki.clients[c].fingerprintSha256Colon;
    sink = await startSink({
      tls: 'starttls', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert,
      decide(stage, address, peer) {
        if (stage !== 'mail') return null;
        if (!peer.clientFingerprint) return { code: 454, text: '4.7.0 Client certificate required' };
        if (!peer.clientAuthorized) return { code: 454, text: '4.7.1 Client certificate not trusted' };
        const allowed = (expected[address.split('@')[1]!] ?? []).map(fp);
        return allowed.includes(peer.clientFingerprint) ? null : { code: 454, text: '4.7.1 Client certificate not authorized for this sender' };
      },
    });
    bounces = await startSink();
    const files: Record<string, string> = {};
    for (const c of ['alice', 'ed25519', 'ecdsa', 'stranger'] as const) {
      files[`${c}.crt`] = await readFile(pki.clients[c].cert, 'utf8');
      files[`${c}.key`] = await readFile(pki.clients[c].key, 'utf8');
    }
    s = await startDeliveryServer({
      files,
      config: configYaml({
        hostname: 'postern.test',
        localDomains: ['partner.example'],
        sandbox: { timeoutMs: 1000 },
        listeners: [testListener('in'), testListener('sub', { tls: testServerTls(pki, { clientCertificates: 'request' }) })],
        delivery: smarthostDelivery(sink.port, {
          tls: { mode: 'encrypt' },
          retrySchedule: [0.3],
          maxAgeHours: 0.0008,
          clientCertificates: {
            alice: { cert: './alice.crt', key: './alice.key' },
            'device-ed': { cert: './ed25519.crt', key: './ed25519.key' },
            'device-ec': { cert: './ecdsa.crt', key: './ecdsa.key' },
            stranger: { cert: './stranger.crt', key: './stranger.key' },
          },
        }),
      }),
      scripts: {
        'predelivery.ts': `
const CERTS: Record<string, string> = {
  'alice.example': 'alice', 'ed.example': 'device-ed', 'ec.example': 'device-ec',
  'stranger.example': 'stranger', // issued by a CA the next hop does not trust
};
export default function predelivery(ctx: PredeliveryContext): PredeliveryVerdict | void {
  log('CTX ' + JSON.stringify(ctx));
  if (ctx.message.sender === '') return deliver({ host: '127.0.0.1', port: ${bounces.port}, tls: { mode: 'none' } });
  const cert = CERTS[ctx.message.sender.split('@')[1]];
  if (cert) return deliver({ tls: { clientCertificate: cert } });
}
`,
      },
    });
  });
  after(async () => {
    await s?.stop();
    await sink?.close();
    await bounces?.close();
  });

  const contexts = (): Array<{ message: { id: string; sender: string; attempt: number; recipients: string[]; size: number; previousErrors: string[] }; destination: Record<string, unknown>; session: Record<string, unknown> }> =>
    s.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('CTX ')).map((l) => JSON.parse((l.msg as string).slice(4)));

  test('the script picks the certificate per sender domain (RSA, Ed25519, ECDSA); the next hop sees its fingerprint', async () => {
    const before = sink.messages.length;
    const ids = [
      await s.send('a@alice.example', ['r1@partner.example']),
      await s.send('e@ed.example', ['r2@partner.example']),
      await s.send('c@ec.example', ['r3@partner.example', 'r4@partner.example']),
    ];
    await sink.waitFor(before + 3);
    const got = new Map(sink.messages.slice(before).map((m) => [m.from, m]));
    assert.equal(got.get('a@alice.example')!.clientFingerprint, pki.clients.alice.fingerprintSha256Colon);
    assert.equal(got.get('e@ed.example')!.clientFingerprint, pki.clients.ed25519.fingerprintSha256Colon);
    assert.equal(got.get('c@ec.example')!.clientFingerprint, pki.clients.ecdsa.fingerprintSha256Colon);
    assert.deepEqual(got.get('c@ec.example')!.to, ['r3@partner.example', 'r4@partner.example'], 'one transaction for both recipients');
    // The delivery log line names the certificate presented (Postfix-style status line). It is written once the
    // next hop's 250 is read, which may be after the sink has the message.
    await until('the delivery line of the first message', () => s.logs.some((l) => l.status === 'sent' && l.id === ids[0]));
    const sentLine = s.logs.find((l) => l.status === 'sent' && l.id === ids[0])!;
    assert.equal(sentLine.clientCertificate, 'alice');
    assert.match(String(sentLine.msg), /, tls=TLSv1\.[23], client_certificate=alice, status=sent \(250 /);
    for (const m of got.values()) {
      assert.equal(m.tls, true);
      assert.equal(m.clientAuthorized, true);
      assert.match(m.data.toString(), /^Received: from client\.example /);
    }
    for (const id of ids) await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
    for (const id of ids) assert.equal(await s.runtime.spool.has(id), false, 'removed after the next hop accepted it');
  });

  test('the script sees the message, the destination and the submitting session (certificate summary)', async () => {
    const c = await SmtpTestClient.connect(s.port('sub'));
    await c.hello({ name: 'laptop.example', starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') } });
    const r = await c.sendMail('a@alice.example', ['ctx@partner.example'], 'Subject: ctx\r\n\r\nx\r\n');
    await c.quit();
    const id = /queued as (\w+)/.exec(r.text)![1]!;
    await s.nextAttempt((e) => e.id === id, { past: true });
    const ctx = contexts().find((x) => x.message.id === id)!;
    assert.equal(ctx.message.sender, 'a@alice.example');
    assert.deepEqual(ctx.message.recipients, ['ctx@partner.example']);
    assert.equal(ctx.message.attempt, 1);
    assert.deepEqual(ctx.message.previousErrors, []);
    assert.ok(ctx.message.size > 20);
    assert.deepEqual(ctx.destination, { host: '127.0.0.1', port: sink.port, implicitTls: false, domain: 'partner.example', kind: 'smarthost' });
    assert.equal(ctx.session.listener, 'sub');
    assert.equal(ctx.session.helo, 'laptop.example');
    assert.equal(ctx.session.authenticatedUser, null);
    const cert = ctx.session.clientCertificate as Record<string, unknown>;
    assert.equal(cert.fingerprintSha256, pki.clients.alice.fingerprintSha256);
    assert.equal(cert.pinSha256, pki.clients.alice.pinSha256);
    assert.equal(cert.verified, true);
    assert.equal(JSON.stringify(ctx).includes('PRIVATE KEY'), false, 'no key material in the sandbox');
  });

  test('without a certificate, or with one the next hop does not trust, the mail is refused, retried, then bounced', async () => {
    const noCert = await s.send('n@nocert.example', ['x@partner.example']);
    const wrong = await s.send('w@stranger.example', ['y@partner.example']);
    const finished = await Promise.all([noCert, wrong].map((id) => s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 20_000 })));
    for (const e of finished) {
      assert.ok(e.attempt >= 2, `retried before bouncing (${e.attempt} attempts)`);
      assert.equal(e.outcomes[0]!.status, 'temporary');
      assert.ok(e.bounceId);
    }
    assert.ok(sink.attempts.filter((a) => a.from === 'n@nocert.example').length >= 2);
    assert.ok(sink.attempts.filter((a) => a.from === 'w@stranger.example').every((a) => a.peer.clientFingerprint === pki.clients.stranger.fingerprintSha256Colon && !a.peer.clientAuthorized));
    const dsns = await bounces.waitFor(2);
    const byRcpt = new Map(dsns.map((m) => [m.to[0], m]));
    const d1 = byRcpt.get('n@nocert.example')!;
    assert.equal(d1.from, '', 'bounces come from the null sender');
    const p1 = parseDsn(d1.data);
    assert.equal(p1.headers.to, '<n@nocert.example>');
    assert.equal(p1.perMessage['reporting-mta'], 'dns; postern.test');
    assert.equal(p1.recipients.length, 1);
    assert.equal(p1.recipients[0]!['final-recipient'], 'rfc822; x@partner.example');
    assert.equal(p1.recipients[0]!.action, 'failed');
    assert.equal(p1.recipients[0]!.status, '4.7.0');
    assert.equal(p1.recipients[0]!['remote-mta'], 'dns; 127.0.0.1');
    assert.equal(p1.recipients[0]!['diagnostic-code'], 'smtp; 454 4.7.0 Client certificate required');
    assert.match(p1.text, /expired in the queue/);
    assert.match(p1.returnedHeader, /^Received: from client\.example/);
    const p2 = parseDsn(byRcpt.get('w@stranger.example')!.data);
    assert.equal(p2.recipients[0]!['diagnostic-code'], 'smtp; 454 4.7.1 Client certificate not trusted');
    // The retries carried the previous errors into the script's context.
    const later = contexts().filter((x) => x.message.id === noCert && x.message.attempt > 1);
    assert.match(later[0]!.message.previousErrors[0]!, /x@partner\.example: 127\.0\.0\.1\[127\.0\.0\.1\]:\d+ said: 454 4\.7\.0 Client certificate required/);
  });

  test('rotating a named certificate\'s files: the next connection presents the new certificate', async () => {
    expected['ec.example'] = ['ecdsa', 'bob'];
    const before = sink.messages.length;
    await s.send('c@ec.example', ['r5@partner.example']);
    await sink.waitFor(before + 1);
    assert.equal(sink.messages.at(-1)!.clientFingerprint, pki.clients.ecdsa.fingerprintSha256Colon);
    // A reload that catches the key already replaced but not yet the certificate is refused; the next one succeeds.
    const reloaded = new Promise<void>((resolve) => { const off = s.reloader.onReload((o) => { if (o.ok) { off(); resolve(); } }); });
    await writeFile(join(s.dir, 'ecdsa.key'), await readFile(pki.clients.bob.key, 'utf8'));
    await writeFile(join(s.dir, 'ecdsa.crt'), await readFile(pki.clients.bob.cert, 'utf8'));
    await reloaded;
    await s.send('c@ec.example', ['r6@partner.example']);
    await sink.waitFor(before + 2);
    assert.equal(sink.messages.at(-1)!.clientFingerprint, pki.clients.bob.fingerprintSha256Colon);
  });

  test('a key that does not match its certificate is refused at reload; the running generation keeps delivering', async () => {
    const refused = new Promise<{ ok: boolean; errors: string[] }>((resolve) => { const off = s.reloader.onReload((o) => { off(); resolve(o); }); });
    const goodKey = await readFile(join(s.dir, 'alice.key'), 'utf8');
    await writeFile(join(s.dir, 'alice.key'), await readFile(pki.clients.ecdsa.key, 'utf8'));
    const outcome = await refused;
    assert.equal(outcome.ok, false);
    assert.match(outcome.errors.join('\n'), /postern\.yaml:\d+:\d+: delivery\.clientCertificates\.alice\.key: \S*alice\.key: private key does not match certificate/);
    const before = sink.messages.length;
    await s.send('a@alice.example', ['r7@partner.example']);
    await sink.waitFor(before + 1);
    assert.equal(sink.messages.at(-1)!.clientFingerprint, pki.clients.alice.fingerprintSha256Colon, 'the old generation still has the good pair');
    const restored = new Promise<void>((resolve) => { const off = s.reloader.onReload((o) => { if (o.ok) { off(); resolve(); } }); });
    await writeFile(join(s.dir, 'alice.key'), goodKey);
    await restored;
  });
});

describe('no-client-certificate', () => {
  // A script can withhold the default outbound client certificate for one destination (`clientCertificate: null`).
  test('clientCertificate: null presents no certificate where the configuration names a default', async () => {
    const pki = await makeTestPki();
    const sink = await startSink({ tls: 'starttls', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert });
    const s = await startDeliveryServer({
      files: { 'laptop.crt': await readFile(pki.clients.alice.cert, 'utf8'), 'laptop.key': await readFile(pki.clients.alice.key, 'utf8') },
      config: configYaml({
        listeners: [testListener('in')],
        delivery: {
          route: { smarthost: { host: '127.0.0.1', port: sink.port } },
          tls: { mode: 'encrypt', clientCertificate: 'laptop' },
          clientCertificates: { laptop: { cert: './laptop.crt', key: './laptop.key' } },
        },
      }),
      scripts: {
        'rcptto.ts': 'export default () => accept();',
        'predelivery.ts': `export default (ctx) => ctx.destination.domain === 'anonymous.example' ? deliver({ tls: { clientCertificate: null } }) : undefined;`,
      },
    });
    try {
      await s.send('me@example.net', ['a@anonymous.example']);
      await s.send('me@example.net', ['b@known.example']);
      await sink.waitFor(2);
      const by = (rcpt: string) => sink.messages.find((m) => m.to[0] === rcpt)!;
      assert.equal(by('a@anonymous.example').clientFingerprint, null);
      assert.equal(by('a@anonymous.example').tls, true);
      assert.equal(by('b@known.example').clientFingerprint, pki.clients.alice.fingerprintSha256Colon);
    } finally {
      await s.stop();
      await sink.close();
    }
  });
});

describe('tls-modes', () => {
  // Outbound TLS modes (Postfix smtp_tls_security_level) against next hops without STARTTLS, with a self-signed
  // certificate, with a CA-issued one (STARTTLS and implicit TLS), and with one that breaks the handshake.
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
});

describe('outbound-files', () => {
  // A missing or mismatched outbound key, or a certificate TLS would refuse to present, is a configuration error:
  // the server refuses to start on it.
  test('the server does not start with an unreadable or mismatched outbound client certificate', async () => {
    const pki = await makeTestPki();
    const dir = await mkdtemp(join(tmpdir(), 'postern-outbound-'));
    await copyFile(pki.clients.alice.cert, join(dir, 'laptop.crt'));
    await copyFile(pki.clients.bob.key, join(dir, 'laptop.key'));
    const config = (key: string): string => `
dataDir: ${dir}/data
listeners: [{ name: in, listen: "127.0.0.1:0" }]
delivery:
  route: { smarthost: { host: 127.0.0.1, port: 2525 } }
  clientCertificates: { laptop: { cert: ./laptop.crt, key: ${key} } }
`;
    const start = (key: string) => startPostern({ configText: config(key), baseDir: dir, watch: false, logger: createLogger('silent') });
    // Named at the key's line of the configuration (here inline text: `(inline)`), then the file.
    await assert.rejects(start('./missing.key'), /^GenerationError: \(inline\):6:60: delivery\.clientCertificates\.laptop\.key: \S*missing\.key: cannot read/);
    await assert.rejects(start('./laptop.key'), /^GenerationError: \(inline\):6:60: delivery\.clientCertificates\.laptop\.key: \S*laptop\.key: private key does not match certificate/);
    await copyFile(pki.clients.alice.key, join(dir, 'laptop.key'));
    const running = await start('./laptop.key');
    await running.close();
  });

  test('a client certificate whose key TLS refuses (RSA 1024) is refused at start, not at every delivery', async () => {
    // It used to pass every check and then fail each handshake: deferred for ever in encrypt mode, and in may mode
    // sent in plaintext without the certificate by the retry that follows a failed handshake.
    const pki = await makeTestPki();
    const dir = await mkdtemp(join(tmpdir(), 'postern-outbound-'));
    const old = await issueClientCertificate(pki.authorities.ca, { commonName: 'old-device', rsaBits: 1024 });
    await writeFile(join(dir, 'old.crt'), old.cert);
    await writeFile(join(dir, 'old.key'), old.key);
    const configText = `
dataDir: ${dir}/data
listeners: [{ name: in, listen: "127.0.0.1:0" }]
delivery:
  route: { smarthost: { host: 127.0.0.1, port: 2525 } }
  clientCertificates: { old: { cert: ./old.crt, key: ./old.key } }
`;
    await assert.rejects(startPostern({ configText, baseDir: dir, watch: false, logger: createLogger('silent') }),
      /^GenerationError: \(inline\):6:38: delivery\.clientCertificates\.old\.cert: \S*old\.crt: certificate "CN=old-device" has a 1024-bit RSA key, which TLS refuses to present \(OpenSSL security level 2: RSA at least 2048 bits/);
  });

  test('a passphrase-protected client key is refused at start with a message that says so', async () => {
    // OpenSSL's own word for it, with no passphrase to ask for, was "interrupted or cancelled".
    const pki = await makeTestPki();
    const dir = await mkdtemp(join(tmpdir(), 'postern-outbound-'));
    await copyFile(pki.clients.alice.cert, join(dir, 'laptop.crt'));
    const key = createPrivateKey(await readFile(pki.clients.alice.key, 'utf8'));
    await writeFile(join(dir, 'pkcs8.key'), key.export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'secret' }));
    // The traditional form (Proc-Type: 4,ENCRYPTED), as `openssl rsa -aes256 -traditional` writes it.
    await writeFile(join(dir, 'plain.key'), key.export({ type: 'pkcs1', format: 'pem' }));
    execFileSync('openssl', ['rsa', '-in', join(dir, 'plain.key'), '-aes256', '-traditional', '-passout', 'pass:secret', '-out', join(dir, 'traditional.key')], { stdio: 'ignore' });
    assert.match(await readFile(join(dir, 'traditional.key'), 'utf8'), /Proc-Type: 4,ENCRYPTED/);
    for (const file of ['pkcs8.key', 'traditional.key']) {
      const configText = `
dataDir: ${dir}/data
listeners: [{ name: in, listen: "127.0.0.1:0" }]
delivery:
  route: { smarthost: { host: 127.0.0.1, port: 2525 } }
  clientCertificates: { laptop: { cert: ./laptop.crt, key: ./${file} } }
`;
      await assert.rejects(startPostern({ configText, baseDir: dir, watch: false, logger: createLogger('silent') }),
        new RegExp(`^GenerationError: \\(inline\\):6:\\d+: delivery\\.clientCertificates\\.laptop\\.key: \\S*${file.replace('.', '\\.')}: the private key is encrypted \\(passphrase-protected\\), and Postern takes no passphrase`), file);
    }
  });
});

describe('pool-keys', () => {
  /**
   * The queue process's connection pool over a long run: one entry per next hop (with its TLS settings) that has
   * connections now, none for one whose connections are all gone. Taking a destination's last idle connection
   * left its empty list in the pool for good, so every next hop that was ever reused stayed (a queue that sends
   * by MX meets as many hosts as recipient domains name: whoever controls a domain's DNS names new ones), and
   * each new connection at a destination's limit walked them all (makeRoom).
   */
  const PLAIN: ConnectionSecurity = { secure: false, ignoreTLS: true, requireTLS: false, opportunisticTLS: false, tls: {}, mode: 'none', key: 'none' };
  const OPTS = { heloName: 'postern.test', connectTimeoutMs: 10_000, commandTimeoutMs: 10_000 };
  const HOSTS = 2_000;

  test(`${HOSTS} next hops each used twice (the second time from the pool), then gone: the pool keeps nothing of them`, { timeout: 600_000 }, async () => {
    const sink = await startRawSink(); // greets at once
    const pool = new ConnectionPool();
    try {
      let next = 0;
      // As a transaction does: open, release for reuse, the next transaction takes it from the pool, and its
      // release closes it (its message count reached, or the next hop said something that ends reuse).
      const oneHost = async (i: number): Promise<void> => {
        const endpoint: Endpoint = { host: `mx${i}.hostile.test`, address: '127.0.0.1', port: sink.port, security: PLAIN };
        pool.release(await pool.open(endpoint, OPTS), true);
        const again = pool.takeIdle(`${endpoint.host}:${endpoint.port}|${PLAIN.key}`);
        assert.ok(again, 'the second use takes the pooled connection');
        pool.release(again, false);
      };
      await Promise.all(Array.from({ length: 16 }, async () => {
        while (next < HOSTS) await oneHost(next++);
      }));
      assert.equal(pool.idleCount, 0);
      assert.deepEqual(pool.destinationsHeld, { idle: 0, open: 0 }, 'no next hop without a connection is kept');
    } finally {
      pool.close();
      await sink.close();
    }
  });
});
