// Interoperability with real Postfix (private instances, loopback, no DNS):
//  - Postfix as the next hop, set up like the server side of the "Postfix, authentification par certificats"
//    recipe (smtpd_tls_ask_ccert, relay_clientcerts keyed by fingerprint, permit_tls_clientcerts): it relays
//    what Postern sends with the listed client certificate and refuses it without;
//  - Postfix as the client (the laptop side: relayhost = Postern, smtp_tls_chain_files): a Postern listener
//    lets it relay when a script finds its certificate's fingerprint in a table.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { freePort, needsPostfix, startPostfix, startSmtpSink, type PostfixInstance } from '../helpers/postfix.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { parseDsn, startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener, testServerTls } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

const skip = needsPostfix();
const colon = (hex: string): string => hex.toUpperCase().match(/../g)!.join(':');
let pki: TestPki;

before(async () => { pki = await makeTestPki(); });

test('Postfix as next hop: relay_clientcerts + permit_tls_clientcerts accepts the listed certificate, refuses without', skip, async (t) => {
  const smtpSink = await startSmtpSink();
  t.after(() => smtpSink.stop());
  const bounces = await startSink();
  t.after(() => bounces.close());
  const smtpdPort = await freePort();
  // Files Postfix reads: relay_clientcerts (MD5 fingerprint, as the recipe makes them with
  // `openssl x509 -fingerprint -noout -md5`) and the server key + chain.
  const tmp = await mkdtemp(join(tmpdir(), 'postern-pf-files-'));
  t.after(() => rm(tmp, { recursive: true, force: true }));
  await chmod(tmp, 0o755);
  await writeFile(join(tmp, 'relay_clientcerts'), `${colon(pki.clients.alice.fingerprintMd5)}   laptop.example.net\n`);
  await writeFile(join(tmp, 'server-chain.pem'), (await readFile(pki.server.key, 'utf8')) + (await readFile(pki.server.cert, 'utf8')), { mode: 0o644 });
  const pf: PostfixInstance = await startPostfix('server', {
    relayhost: `[127.0.0.1]:${smtpSink.port}`,
    smtp_tls_security_level: 'none',
    smtpd_tls_security_level: 'may',
    smtpd_tls_chain_files: join(tmp, 'server-chain.pem'),
    smtpd_tls_CAfile: pki.ca.cert,
    smtpd_tls_ask_ccert: 'yes',
    smtpd_tls_ccert_verifydepth: '5',
    smtpd_tls_loglevel: '1',
    smtpd_tls_received_header: 'yes',
    smtpd_tls_fingerprint_digest: 'md5',
    relay_clientcerts: `texthash:${join(tmp, 'relay_clientcerts')}`,
    smtpd_relay_restrictions: 'permit_tls_clientcerts, reject_unauth_destination',
  }, [`127.0.0.1:${smtpdPort} inet n - n - - smtpd`]);
  t.after(() => pf.stop());

  const s = await startDeliveryServer({
    files: { 'alice.crt': await readFile(pki.clients.alice.cert, 'utf8'), 'alice.key': await readFile(pki.clients.alice.key, 'utf8') },
    config: configYaml({
      hostname: 'postern.test',
      localDomains: ['example.net'],
      listeners: [testListener('in')],
      delivery: smarthostDelivery(smtpdPort, {
        tls: { mode: 'verify', ca: 'test-ca' },
        caFiles: { 'test-ca': pki.ca.cert },
        clientCertificates: { laptop: { cert: './alice.crt', key: './alice.key' } },
        retrySchedule: [3600],
      }),
    }),
    scripts: {
      'predelivery.ts': `
export default function predelivery(ctx: PredeliveryContext): PredeliveryVerdict | void {
  if (ctx.message.sender === '') return deliver({ host: '127.0.0.1', port: ${bounces.port}, tls: { mode: 'none' } });
  // Our own domain's mail goes out with the laptop certificate; the server name is the certificate's.
  if (ctx.message.sender.endsWith('@example.com')) return deliver({ tls: { clientCertificate: 'laptop', serverName: 'localhost' } });
  return deliver({ tls: { serverName: 'localhost' } });
}
`,
    },
  });
  t.after(() => s.stop());

  const good = await s.send('alice@example.com', ['rcpt@example.net'], 'Subject: with certificate\r\n\r\nhello Postfix\r\n');
  const e1 = await s.nextAttempt((e) => e.id === good, { past: true, timeoutMs: 20_000 });
  assert.equal(e1.outcomes[0]!.status, 'delivered', e1.outcomes[0]!.reply);
  assert.match(e1.outcomes[0]!.reply, /^250 2\.0\.0 Ok: queued as \w+/);
  const dumped = await smtpSink.waitFor(/Subject: with certificate/);
  assert.match(dumped, /X-Rcpt-Args: <rcpt@example\.net>/);
  assert.match(dumped, /\(Client CN "alice", Issuer "Postern Test CA" \(verified OK\)\)/, 'Postfix saw and verified our certificate');
  await pf.waitLog(/Trusted TLS connection established from localhost\[127\.0\.0\.1\]/);

  const bad = await s.send('someone@other.example', ['rcpt@example.net'], 'Subject: without certificate\r\n\r\nhello\r\n');
  const e2 = await s.nextAttempt((e) => e.id === bad, { past: true, timeoutMs: 20_000 });
  assert.equal(e2.outcomes[0]!.status, 'permanent');
  assert.equal(e2.outcomes[0]!.reply, '554 5.7.1 <rcpt@example.net>: Relay access denied');
  assert.equal(e2.removed, true);
  const [dsn] = await bounces.waitFor(1);
  const report = parseDsn(dsn!.data);
  assert.equal(report.recipients[0]!['diagnostic-code'], 'smtp; 554 5.7.1 <rcpt@example.net>: Relay access denied');
  assert.equal(report.recipients[0]!.status, '5.7.1');
  assert.equal((await smtpSink.messages()).filter((m) => m.includes('without certificate')).length, 0);
});

test('Postfix as client: relayhost = Postern, smtp_tls_chain_files; a script authorises it by fingerprint', skip, async (t) => {
  const sink: Sink = await startSink();
  t.after(() => sink.close());
  const s: DeliveryServer = await startDeliveryServer({
    files: {
      relay_clientcerts: [
        `${pki.clients.alice.fingerprintSha256Colon} laptop`, // Postfix-style upper-case colon hex
        `${pki.clients.ed25519.fingerprintSha256} ed-laptop`,
      ].join('\n'),
    },
    config: configYaml({
      hostname: 'postern.test',
      tables: { relay_clientcerts: './relay_clientcerts' },
      listeners: [testListener('relay', { tls: testServerTls(pki, { clientCertificates: 'request' }) })],
      delivery: smarthostDelivery(sink.port),
    }),
    scripts: {
      'rcptto.ts': `
export default function rcptto(ctx: RcptToContext): Verdict | void {
  const cert = ctx.connection.clientCertificate;
  const who = cert ? lookup('relay_clientcerts', cert.fingerprint.sha256) : null;
  if (who) { log('relay for', who); return accept(); }
}
`,
    },
  });
  t.after(() => s.stop());
  const inject = await freePort();
  const pf = await startPostfix('laptop', {
    myhostname: 'laptop.example',
    relayhost: `[localhost]:${s.port()}`,
    smtp_tls_security_level: 'secure',
    smtp_tls_CAfile: pki.ca.cert,
    smtp_tls_chain_files: pki.clients.alice.pem,
    smtp_tls_loglevel: '1',
    transport_maps: `inline:{ bob.test=smtp-bob:[localhost]:${s.port()}, ed.test=smtp-ed:[localhost]:${s.port()} }`,
  }, [
    `127.0.0.1:${inject} inet n - n - - smtpd -o smtpd_tls_security_level=none`,
    `smtp-bob unix - - n - - smtp -o smtp_tls_chain_files=${pki.clients.bob.pem}`,
    `smtp-ed unix - - n - - smtp -o smtp_tls_chain_files=${pki.clients.ed25519.pem}`,
  ]);
  t.after(() => pf.stop());

  const c = await SmtpTestClient.connect(inject);
  await c.hello({ name: 'mua.example' });
  for (const [to, subject] of [['rcpt@partner.example', 'alice via Postfix'], ['x@bob.test', 'bob via Postfix'], ['y@ed.test', 'ed25519 via Postfix']]) {
    const r = await c.sendMail('alice@example.com', [to!], `Subject: ${subject}\r\n\r\nhello\r\n`);
    assert.equal(r.code, 250, r.text);
  }
  await c.quit();

  // Postfix also bounces bob's refused message to alice@example.com, through Postern with alice's
  // certificate: that bounce may reach the sink before or after the others, so it is left out here.
  const relayed = (): string[] => sink.messages.map((m) => /Subject: (.*)/.exec(m.data.toString())![1]!)
    .filter((subject) => subject !== 'Undelivered Mail Returned to Sender').sort();
  await until('both relayed messages at the sink', () => relayed().length >= 2, { timeoutMs: 30_000 })
    .catch(async (err: Error) => { throw new Error(`${err.message}\nPostfix log:\n${await pf.log()}`); });
  assert.deepEqual(relayed(), ['alice via Postfix', 'ed25519 via Postfix']);
  const alice = sink.messages.find((m) => m.data.toString().includes('alice via Postfix'))!;
  assert.deepEqual(alice.to, ['rcpt@partner.example']);
  assert.match(alice.data.toString(), /^Received: from laptop\.example \(.*\[127\.0\.0\.1\]\)\r\n\t\(using TLSv1\.3 .*\)\r\n\t\(Client CN "alice", Issuer "Postern Test CA" \(verified OK\)\)\r\n\tby postern\.test \(Postern\) with ESMTPS/,
    'Postern received it over TLS from the Postfix laptop with its certificate');
  assert.match(alice.data.toString(), /\r\nReceived: from mua\.example .*\r\n\tby laptop\.example \(Postfix\)/);
  const log = await pf.waitLog(/to=<x@bob\.test>.*status=bounced/);
  assert.match(log, /Verified TLS connection established to localhost\[127\.0\.0\.1\]:\d+/);
  assert.match(log, /to=<rcpt@partner\.example>, relay=localhost\[127\.0\.0\.1\]:\d+.*status=sent \(250 2\.0\.0 Ok: queued as \w+\)/);
  assert.match(log, /to=<x@bob\.test>.*status=bounced \(host localhost\[127\.0\.0\.1\] said: 554 5\.7\.1 <x@bob\.test>: Relay access denied/);
  assert.ok(s.logs.some((l) => l.msg === 'relay for laptop') && s.logs.some((l) => l.msg === 'relay for ed-laptop'));
});
