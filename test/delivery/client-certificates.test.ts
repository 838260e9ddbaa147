// Delivery with TLS client certificates: the pre-delivery script picks one per sender domain, the next hop
// (an smtp-server that verifies them) sees its fingerprint; without one, or with the wrong one, the mail is
// refused, retried and finally bounced. Rotating a certificate's files changes the next connection.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTestPki, type TestPki, type ClientName } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, parseDsn, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener, testServerTls } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

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
