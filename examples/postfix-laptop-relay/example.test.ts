// The laptop side of "Postfix, authentification par certificats", with this folder's postern.yaml and
// scripts, delivery on. The home server kaoru.example.net is a second Postern on 127.0.0.1 (DNS is a
// stand-in) set up like the article's server: STARTTLS, a client certificate from its CA required
// (smtpd_tls_req_ccert), and relaying only for fingerprints listed in relay_clientcerts (permit_tls_clientcerts,
// with the rcptto script of examples/postfix-relay-clientcerts).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { startPostern, type RunningPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { issueServerCertificate } from '../../engine/certificates/index.ts';
import type { AttemptEvent } from '../../engine/queue/runner.ts';
import type { SpoolEnvelope } from '../../engine/spool/envelope.ts';
import { makeTestPki, type TestPki } from '../../test/helpers/pki.ts';
import { run } from '../../test/helpers/example.ts';
import { setUnhurriedLimits } from '../../test/helpers/postern.ts';
import { submitMessage } from '../../test/helpers/smtp-client.ts';
import { recordAttempts, type AttemptLog } from '../../test/helpers/attempts.ts';
import { fakeResolver, parseDsn, startDeliveryServer, type DeliveryServer } from '../../test/helpers/delivery-server.ts';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));
const colon = (hex: string): string => hex.toUpperCase().match(/../g)!.join(':');

let pki: TestPki;
let home: DeliveryServer;
let dir: string;
let laptop: RunningPostern;
let attemptLog: AttemptLog;

before(async () => {
  pki = await makeTestPki();
  // The home server: its certificate names kaoru.example.net (the laptop verifies it); alice's certificate
  // is the laptop's, listed by its MD5 fingerprint as the article makes them (openssl x509 -fingerprint -md5).
  const homeCert = await issueServerCertificate(pki.authorities.ca, { commonName: 'kaoru.example.net', dnsNames: ['kaoru.example.net'], keyType: 'ecdsa' });
  home = await startDeliveryServer({
    files: {
      'home.crt': homeCert.cert + pki.authorities.ca.cert,
      'home.key': homeCert.key,
      relay_clientcerts: `${colon(pki.clients.alice.fingerprintMd5)}   laptop.example.net\n`,
    },
    scripts: { 'rcptto.ts': await readFile(new URL('../postfix-relay-clientcerts/scripts/rcptto.ts', import.meta.url), 'utf8') },
    config: `
hostname: kaoru.example.net
localDomains: [example.net]
tables: { relay_clientcerts: ./relay_clientcerts }
listeners:
  - name: smtp
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ./home.crt, key: ./home.key, clientCertificates: require, caFiles: [${JSON.stringify(pki.ca.cert)}] }
    limits: { greetingDelayMs: 0 }
`,
  });

  // The laptop, as a user would install this example: its files, the CA and laptop.pem (key + certificate).
  dir = await mkdtemp(join(tmpdir(), 'postern-example-postfix-laptop-relay-'));
  await cp(HERE, dir, { recursive: true, filter: (src) => !['data', 'pki'].includes(basename(src)) && !src.endsWith('.test.ts') });
  await mkdir(join(dir, 'pki'));
  await copyFile(pki.ca.cert, join(dir, 'pki', 'ca.crt'));
  await copyFile(pki.clients.alice.pem, join(dir, 'pki', 'laptop.pem'));
  await editConfig((doc) => {
    doc.setIn(['listeners', 0, 'listen'], '127.0.0.1:0');
    doc.setIn(['delivery', 'route', 'smarthost', 'port'], home.port());
    setUnhurriedLimits(doc); // the test's copy: no script here is meant to run out of time
  });
  const logs: string[] = [];
  laptop = await startPostern({
    configPath: join(dir, 'postern.yaml'),
    resolver: fakeResolver({}, { 'kaoru.example.net': ['127.0.0.1'] }),
    logger: process.env.POSTERN_TEST_LOG ? createLogger(process.env.POSTERN_TEST_LOG, process.stderr)
      : createLogger('info', new Writable({ write(chunk: Buffer, _enc, cb) { logs.push(chunk.toString()); cb(); } })),
  });
  attemptLog = recordAttempts(laptop.queue!);
});
after(async () => {
  await laptop?.close();
  await home?.stop();
  await rm(dir, { recursive: true, force: true });
});

async function editConfig(edit: (doc: ReturnType<typeof parseDocument>) => void): Promise<void> {
  const file = join(dir, 'postern.yaml');
  const doc = parseDocument(await readFile(file, 'utf8'));
  edit(doc);
  await writeFile(file, doc.toString());
}

/** Make a change to the laptop's files and wait for the reload it causes. */
async function reloadAfter(change: () => Promise<void>): Promise<void> {
  const reloaded = new Promise<{ ok: boolean; errors: string[] }>((resolve) => { const off = laptop.reloader.onReload((o) => { off(); resolve(o); }); });
  await change();
  const outcome = await reloaded;
  assert.equal(outcome.ok, true, outcome.errors.join('\n'));
}

/** What mutt on the laptop does: submit to the local listener. Returns the laptop's queue id. */
const send = (to: string): Promise<string> =>
  submitMessage(laptop.addresses.get('local')!.port, 'me@example.net', [to], `From: <me@example.net>\r\nTo: <${to}>\r\nSubject: from the laptop\r\n\r\nhi\r\n`, 'localhost');

/** The first delivery attempt (already made, or the next one) that matches. */
const attempt = (pred: (e: AttemptEvent) => boolean, timeoutMs = 15_000): Promise<AttemptEvent> => attemptLog.next(pred, { timeoutMs, past: true });

/** Messages the home server accepted (it only spools: no delivery section), with the one for `rcpt`. */
async function atHome(rcpt: string): Promise<{ envelope: SpoolEnvelope; message: string } | undefined> {
  for (const id of await home.runtime.spool.list()) {
    const envelope = await home.runtime.spool.readEnvelope(id);
    if (envelope.recipients.some((r) => r.address === rcpt)) return { envelope, message: (await home.runtime.spool.readMessage(id)).toString() };
  }
  return undefined;
}

const queue = (...args: string[]) => run(process.execPath, [MAIN, 'queue', ...args, '-c', join(dir, 'postern.yaml')]);

test('the laptop relays through the home server, which knows its certificate by fingerprint', async () => {
  const id = await send('friend@elsewhere.example');
  const e = await attempt((x) => x.id === id);
  assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
  assert.equal(e.removed, true, 'gone from the laptop once the home server said 250');
  const got = (await atHome('friend@elsewhere.example'))!;
  assert.equal(got.envelope.sender, 'me@example.net');
  assert.equal(got.envelope.session.helo, 'laptop.example.net', 'EHLO name: the hostname');
  const cert = got.envelope.session.clientCertificate!;
  assert.equal(cert.fingerprintSha256, pki.clients.alice.fingerprintSha256);
  assert.equal(cert.verified, true);
  assert.match(got.message, /^Received: from laptop\.example\.net .*\r\n\t\(using TLS.*\r\n\t\(Client CN "alice", Issuer "Postern Test CA" \(verified OK\)\)\r\n\tby kaoru\.example\.net \(Postern\) with ESMTPS /);
  assert.match(got.message, /\r\nReceived: from localhost /, 'the laptop\'s own Received header follows');
  assert.equal((await queue('list')).stdout, 'Mail queue is empty\n');
});

test('without the certificate the home server refuses and the mail stays queued; with it back, queue retry sends it', async () => {
  await reloadAfter(() => editConfig((doc) => doc.deleteIn(['delivery', 'tls', 'clientCertificate'])));
  const id = await send('friend2@elsewhere.example');
  const e = await attempt((x) => x.id === id);
  assert.equal(e.outcomes[0]!.status, 'temporary');
  assert.match(e.outcomes[0]!.reply, /^kaoru\.example\.net\[127\.0\.0\.1\]:\d+: .*421 4\.7\.1 No client certificate presented/);
  assert.equal(e.removed, false);
  assert.equal(await atHome('friend2@elsewhere.example'), undefined);
  const list = await queue('list');
  assert.match(list.stdout, new RegExp(`^${id} .* <me@example\\.net> +attempts 1, next `, 'm'));
  assert.match(list.stdout, /^ {4}friend2@elsewhere\.example\n {6}\(kaoru\.example\.net\[127\.0\.0\.1\]:\d+: .*421 4\.7\.1 No client certificate presented.*\)$/m);

  await reloadAfter(() => editConfig((doc) => doc.setIn(['delivery', 'tls', 'clientCertificate'], 'laptop')));
  assert.equal((await queue('retry', '--all')).stdout, `1 message due now: ${id}\n`);
  const done = await attempt((x) => x.id === id && x.removed);
  assert.equal(done.attempt, 2);
  assert.equal((await atHome('friend2@elsewhere.example'))!.envelope.session.clientCertificate!.fingerprintSha256, pki.clients.alice.fingerprintSha256);
});

test('a certificate from the same CA that relay_clientcerts does not list: 554 Relay access denied, bounced to the sender', async () => {
  // Replacing laptop.pem is picked up at once (a reload); the next connection presents the new certificate.
  await reloadAfter(() => copyFile(pki.clients.bob.pem, join(dir, 'pki', 'laptop.pem')));
  const id = await send('friend3@elsewhere.example');
  const e = await attempt((x) => x.id === id);
  assert.equal(e.outcomes[0]!.status, 'permanent');
  assert.equal(e.outcomes[0]!.reply, '554 5.7.1 <friend3@elsewhere.example>: Relay access denied');
  assert.equal(e.removed, true);
  assert.ok(e.bounceId);
  // The bounce is mail to the home server's own domain: accepted there without relay permission.
  await attempt((x) => x.id === e.bounceId && x.removed);
  const dsn = (await atHome('me@example.net'))!;
  assert.equal(dsn.envelope.sender, '');
  assert.equal(dsn.envelope.session.clientCertificate!.fingerprintSha256, pki.clients.bob.fingerprintSha256);
  const report = parseDsn(dsn.message);
  assert.equal(report.recipients[0]!['final-recipient'], 'rfc822; friend3@elsewhere.example');
  assert.equal(report.recipients[0]!.status, '5.7.1');
  assert.equal(report.recipients[0]!['diagnostic-code'], 'smtp; 554 5.7.1 <friend3@elsewhere.example>: Relay access denied');
});
