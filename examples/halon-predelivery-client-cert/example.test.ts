// Halon's pre-delivery tls_client_cert, with this folder's postern.yaml, scripts and sender_certificates.
// Delivery is on (unlike test/helpers/example.ts, which turns it off): the smarthost relay.example.net is a
// test SMTP server on 127.0.0.1 (DNS is a stand-in) that requires a client certificate from the test CA
// during the handshake and, like Halon's own MAIL FROM script, lets each certificate send for its domain only.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, copyFile, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { startPostern, type RunningPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { issueServerCertificate } from '../../engine/certificates/index.ts';
import type { AttemptEvent } from '../../engine/queue/runner.ts';
import { makeTestPki, type TestPki } from '../../test/helpers/pki.ts';
import { run } from '../../test/helpers/example.ts';
import { setUnhurriedLimits } from '../../test/helpers/postern.ts';
import { submitMessage } from '../../test/helpers/smtp-client.ts';
import { startSink, type Sink } from '../../test/helpers/sink.ts';
import { recordAttempts, type AttemptLog } from '../../test/helpers/attempts.ts';
import { fakeResolver, parseDsn } from '../../test/helpers/delivery-server.ts';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));

let pki: TestPki;
let tmp: string;
let dir: string;
let relay: Sink;
let postern: RunningPostern;
const logs: Array<Record<string, unknown>> = [];
let attemptLog: AttemptLog;

/** The relay's policy: sender domain -> the SHA-256 fingerprint of the only certificate that may send for it. */
const relayPolicy = (): Record<string, string> => ({
  'example.com': pki.clients.alice.fingerprintSha256Colon,
  'example.org': pki.clients.bob.fingerprintSha256Colon,
  'example.net': pki.clients.bob.fingerprintSha256Colon, // the same customer as example.org
});

before(async () => {
  pki = await makeTestPki();
  tmp = await mkdtemp(join(tmpdir(), 'postern-example-relay-'));
  const relayCert = await issueServerCertificate(pki.authorities.ca, { commonName: 'relay.example.net', dnsNames: ['relay.example.net'], keyType: 'ecdsa' });
  await writeFile(join(tmp, 'relay.crt'), relayCert.cert + pki.authorities.ca.cert);
  await writeFile(join(tmp, 'relay.key'), relayCert.key);
  relay = await startSink({
    tls: 'starttls', cert: join(tmp, 'relay.crt'), key: join(tmp, 'relay.key'),
    ca: pki.ca.cert, requireClientCertificate: true, // no CA-verified client certificate: no TLS session
    decide(stage, address, peer) {
      if (stage === 'rcpt' && address.startsWith('nobody@')) return { code: 550, text: `5.1.1 <${address}>: Recipient address rejected: User unknown` };
      if (stage !== 'mail' || address === '') return null; // bounces: any of our certificates
      const domain = address.slice(address.lastIndexOf('@') + 1);
      return relayPolicy()[domain] === peer.clientFingerprint ? null : { code: 550, text: `5.7.1 No valid X.509 client certificate for ${domain}` };
    },
  });

  // The example as a user would install it: its own files, the certificates where postern.yaml expects them.
  dir = await mkdtemp(join(tmpdir(), 'postern-example-halon-predelivery-'));
  await cp(HERE, dir, { recursive: true, filter: (src) => !['data', 'pki'].includes(basename(src)) && !src.endsWith('.test.ts') });
  await mkdir(join(dir, 'pki'));
  const files: Record<string, string> = {
    'ca.crt': pki.ca.cert,
    'example-com.crt': pki.clients.alice.cert, 'example-com.key': pki.clients.alice.key,
    'example-org.crt': pki.clients.bob.cert, 'example-org.key': pki.clients.bob.key,
  };
  for (const [name, from] of Object.entries(files)) await copyFile(from, join(dir, 'pki', name));
  // Only the addresses change: any free port for the listener, the test relay's port for the smarthost.
  const configPath = join(dir, 'postern.yaml');
  const doc = parseDocument(await readFile(configPath, 'utf8'));
  doc.setIn(['listeners', 0, 'listen'], '127.0.0.1:0');
  doc.setIn(['delivery', 'route', 'smarthost', 'port'], relay.port);
  setUnhurriedLimits(doc); // the test's copy: no script here is meant to run out of time
  await writeFile(configPath, doc.toString());

  postern = await startPostern({
    configPath,
    resolver: fakeResolver({}, { 'relay.example.net': ['127.0.0.1'] }),
    logger: process.env.POSTERN_TEST_LOG ? createLogger(process.env.POSTERN_TEST_LOG, process.stderr) : createLogger('info', new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    })),
  });
  attemptLog = recordAttempts(postern.queue!);
});
after(async () => {
  await postern?.close();
  await relay?.close();
  await rm(dir, { recursive: true, force: true });
  await rm(tmp, { recursive: true, force: true });
});

/** Submit one message on the internal listener; returns its queue id. */
const send = (from: string, to: string[]): Promise<string> =>
  submitMessage(postern.addresses.get('internal')!.port, from, to, `From: <${from}>\r\nSubject: hello from ${from}\r\n\r\nhi\r\n`, 'app.example.com');

/** The first delivery attempt (already made, or the next one) that matches. */
const attempt = (pred: (e: AttemptEvent) => boolean, timeoutMs = 15_000): Promise<AttemptEvent> => attemptLog.next(pred, { timeoutMs, past: true });

test('the certificate follows the sender domain: the relay sees example-com\'s and example-org\'s fingerprints', async () => {
  const com = await send('alice@example.com', ['r1@partner.example']);
  const org = await send('bob@example.org', ['r2@partner.example', 'r3@other.example']);
  for (const id of [com, org]) assert.equal((await attempt((e) => e.id === id)).removed, true, 'left the spool once the relay took it');
  const got = new Map(relay.messages.map((m) => [m.from, m]));
  const fromCom = got.get('alice@example.com')!;
  const fromOrg = got.get('bob@example.org')!;
  assert.equal(fromCom.clientFingerprint, pki.clients.alice.fingerprintSha256Colon);
  assert.equal(fromOrg.clientFingerprint, pki.clients.bob.fingerprintSha256Colon);
  for (const m of [fromCom, fromOrg]) {
    assert.equal(m.tls, true);
    assert.equal(m.clientAuthorized, true, 'the relay verified it against its CA');
    assert.equal(m.servername, 'relay.example.net', 'SNI, and the name verified in tls.mode verify');
  }
  // Two recipient domains: the script ran for each, chose the same certificate, so one transaction carried both.
  assert.deepEqual(fromOrg.to, ['r2@partner.example', 'r3@other.example']);
  assert.match(fromOrg.data.toString(), /^Received: from app\.example\.com /);
});

test('a bounce (null sender) goes out with the default delivery.tls.clientCertificate', async () => {
  const id = await send('alice@example.com', ['nobody@partner.example']);
  const e = await attempt((x) => x.id === id);
  assert.deepEqual(e.outcomes.map((o) => [o.status, o.reply]), [['permanent', '550 5.1.1 <nobody@partner.example>: Recipient address rejected: User unknown']]);
  assert.ok(e.bounceId);
  await attempt((x) => x.id === e.bounceId && x.removed);
  const dsn = relay.messages.find((m) => m.from === '')!;
  assert.deepEqual(dsn.to, ['alice@example.com']);
  assert.equal(dsn.clientFingerprint, pki.clients.alice.fingerprintSha256Colon, 'example-com: the default');
  const report = parseDsn(dsn.data);
  assert.equal(report.recipients[0]!['final-recipient'], 'rfc822; nobody@partner.example');
  assert.equal(report.recipients[0]!.status, '5.1.1');
});

test('a sender domain without a certificate is deferred by the script, and goes out once the table names one', async () => {
  const id = await send('carol@example.net', ['r4@partner.example']);
  const first = await attempt((e) => e.id === id);
  assert.deepEqual(first.outcomes.map((o) => [o.status, o.reply]), [['temporary', '451 4.7.0 No client certificate for sender domain example.net']]);
  assert.equal(first.removed, false);
  assert.ok(first.nextAttemptAt, 'retried on delivery.retrySchedule');
  assert.equal(relay.attempts.some((a) => a.from === 'carol@example.net'), false, 'never offered to the relay');
  const list = await run(process.execPath, [MAIN, 'queue', 'list', '-c', join(dir, 'postern.yaml')]);
  assert.match(list.stdout, new RegExp(`^${id} .* <carol@example\\.net> +attempts 1, next `, 'm'));
  assert.match(list.stdout, /^ {4}r4@partner\.example\n {6}\(451 4\.7\.0 No client certificate for sender domain example\.net\)$/m);

  // The table is data: add the domain (the file is reloaded on change), then make the message due now.
  const reloaded = new Promise<{ ok: boolean; errors: string[] }>((resolve) => { const off = postern.reloader.onReload((o) => { off(); resolve(o); }); });
  await appendFile(join(dir, 'sender_certificates'), 'example.net       example-org\n');
  const outcome = await reloaded;
  assert.equal(outcome.ok, true, outcome.errors.join('\n'));
  const retry = await run(process.execPath, [MAIN, 'queue', 'retry', id, '-c', join(dir, 'postern.yaml')]);
  assert.equal(retry.stdout, `1 message due now: ${id}\n`, retry.output);
  const done = await attempt((e) => e.id === id && e.removed);
  assert.equal(done.attempt, 2);
  const m = relay.messages.find((x) => x.from === 'carol@example.net')!;
  assert.equal(m.clientFingerprint, pki.clients.bob.fingerprintSha256Colon);
});
