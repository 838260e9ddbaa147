// Seed 001's Postfix (smtpd_tls_ask_ccert, CA-verified client certificates may relay) with a Postern script
// in place of `permit_tls_all_clientcerts` that also checks the sender's domain against the certificate's
// identity. Postfix asks over a unix socket in its own private/ directory (owner postfix, as in a chroot),
// with the pre-3.6 md5 fingerprint digest. Asked again at DATA, a data script's header edit reaches the
// relayed message as Postfix's PREPEND.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type ClientName, type TestPki } from '../helpers/pki.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { needs, run } from '../helpers/example.ts';
import { freePort, needsPostfix, startPostfix, startSmtpSink, type PostfixInstance, type SmtpSink } from '../helpers/postfix.ts';

const skip = needsPostfix().skip || needs('swaks').skip;
let pki: TestPki;
let pf: PostfixInstance;
let sink: SmtpSink;
let s: TestServer;
let smtpdPort: number;
let endOfDataPort: number;
let files: string;

before(async () => {
  if (skip) return;
  pki = await makeTestPki();
  sink = await startSmtpSink();
  files = await mkdtemp(join(tmpdir(), 'postern-pf-files-'));
  await chmod(files, 0o755);
  await writeFile(join(files, 'server.pem'), (await readFile(pki.server.key, 'utf8')) + (await readFile(pki.server.cert, 'utf8')), { mode: 0o644 });
  smtpdPort = await freePort();
  endOfDataPort = await freePort();
  pf = await startPostfix('seed001', {
    relayhost: `[127.0.0.1]:${sink.port}`,
    smtp_tls_security_level: 'none',
    smtpd_tls_security_level: 'may',
    smtpd_tls_chain_files: join(files, 'server.pem'),
    smtpd_tls_CAfile: pki.ca.cert,
    smtpd_tls_ask_ccert: 'yes',
    smtpd_tls_fingerprint_digest: 'md5',
    // Seed 001 had `permit_tls_all_clientcerts` here.
    smtpd_relay_restrictions: 'check_policy_service unix:private/postern, reject_unauth_destination',
    // PREPEND applies before the content is received: smtpd_data_restrictions, not end-of-data.
    smtpd_data_restrictions: 'check_policy_service unix:private/postern',
    // A second smtpd (master.cf) asks only after the content, where Postfix would drop a PREPEND.
    postern_end_of_data: 'check_policy_service unix:private/postern',
  }, [`127.0.0.1:${smtpdPort} inet n - n - - smtpd`,
    `127.0.0.1:${endOfDataPort} inet n - n - - smtpd -o smtpd_data_restrictions= -o smtpd_end_of_data_restrictions=$postern_end_of_data`]);
  s = await startTestServer({
    config: `
tables:
  cert_domains: ./cert_domains
policyServices:
  - name: postfix
    listen: ${JSON.stringify(`unix:${join(pf.dir, 'spool', 'private', 'postern')}`)}
    socket: { owner: postfix, mode: '0660' }
    authoritative: true
    fingerprintDigest: md5
    certificateIdentity: { field: CN }
`,
    scripts: {
      'rcptto.ts': `
// permit_tls_all_clientcerts, and the sender's domain must be the one the certificate's CN stands for.
export default function (ctx) {
  const cert = ctx.connection.clientCertificate;
  log('md5=' + (cert?.fingerprint.md5 ?? '') + ' sha256=' + cert?.fingerprint.sha256 + ' verified=' + (cert?.verified ?? false) + ' cn=' + (cert?.subject.CN ?? ''));
  if (!cert?.verified) return reject('Relay access denied: no trusted client certificate', { code: 554 });
  const domain = lookup('cert_domains', ctx.connection.certificateIdentity);
  const sender = ctx.transaction.sender?.domain;
  if (domain !== null && sender === domain) return accept();
  return reject('Sender domain ' + sender + ' is not that of certificate ' + cert.subject.CN, { code: 553, enhanced: '5.7.1' });
}`,
      'data.ts': `
// The certificate's identity, for the mail system behind Postfix (one header: Postfix's PREPEND).
export default (ctx) => accept({ headers: [{ op: 'add', name: 'X-Postern-Certificate',
  value: ctx.connection.certificateIdentity + '; md5=' + ctx.connection.clientCertificate?.fingerprint.md5 + '; state=' + ctx.postfix.protocolState }] });`,
    },
    files: { cert_domains: 'alice example.com\nbob example.org\n' },
  }).catch(async (err: unknown) => { await pf.stop(); throw err; });
});
after(async () => {
  await s?.stop();
  await pf?.stop();
  await sink?.stop();
  if (files) await rm(files, { recursive: true, force: true });
});

const swaks = (client: ClientName | null, from: string, port = smtpdPort) => run('swaks', ['--server', '127.0.0.1', '--port', String(port), '--tls',
  '--ehlo', 'laptop.example', '--from', from, '--to', 'r@elsewhere.example', '--header', `Subject: seed001 ${client ?? 'none'} ${from}`,
  ...client ? ['--tls-cert', pki.clients[client].cert, '--tls-key', pki.clients[client].key] : []]);

test('the socket lies in Postfix\'s private/ directory, owned by postfix, mode 0660', { skip }, async () => {
  const st = await stat(join(pf.dir, 'spool', 'private', 'postern'));
  assert.ok(st.isSocket());
  assert.equal(st.mode & 0o777, 0o660);
  assert.equal(st.uid, Number(spawnSync('id', ['-u', 'postfix']).stdout.toString().trim()));
});

test('a CA-verified certificate relays for its own domain', { skip }, async () => {
  for (const [client, from] of [['alice', 'alice@example.com'], ['bob', 'bob@example.org']] as const) {
    const r = await swaks(client, from);
    assert.equal(r.code, 0, r.output);
    const message = await sink.waitFor(new RegExp(`Subject: seed001 ${client} ${from}`));
    // The data script's header, prepended by Postfix above its own Received header.
    const prepended = `X-Postern-Certificate: ${client}; md5=${pki.clients[client].fingerprintMd5}; state=DATA`;
    assert.ok(message.includes(`\n${prepended}\nReceived: from laptop.example`), message);
    assert.equal(message.split('X-Postern-Certificate:').length, 2, 'one header');
  }
  // Postfix sent the md5 digest (smtpd_tls_fingerprint_digest), and the CN of a certificate it verified.
  assert.ok(s.logs.some((l) => l.msg === `md5=${pki.clients.alice.fingerprintMd5} sha256=null verified=true cn=alice`), 'the md5 fingerprint openssl and node:crypto compute');
});

test('a verified certificate with another domain\'s sender: the script\'s 553 from Postfix', { skip }, async () => {
  const r = await swaks('alice', 'alice@example.org');
  assert.equal(r.code, 24, r.output);
  assert.match(r.stdout, /<~\* 553 5\.7\.1 <r@elsewhere\.example>: Recipient address rejected: Sender domain example\.org is not that of certificate alice/);
});

test('an untrusted certificate and no certificate may not relay', { skip }, async () => {
  for (const client of ['stranger', 'selfsigned', null] as const) {
    const r = await swaks(client, 'alice@example.com');
    assert.equal(r.code, 24, r.output);
    assert.match(r.stdout, /<~\* 554 5\.7\.1 <r@elsewhere\.example>: Recipient address rejected: Relay access denied: no trusted client certificate/);
  }
});

test('asked after the content (smtpd_end_of_data_restrictions), a header edit cannot be a PREPEND: the failure action, not a message without it', { skip }, async () => {
  const r = await swaks('alice', 'alice@example.com', endOfDataPort);
  assert.notEqual(r.code, 0, r.output);
  assert.match(r.stdout, /<~  250 2\.1\.5 Ok/, 'the recipient was accepted (rcptto)');
  assert.match(r.stdout, /<~\* 450 4\.7\.1 <END-OF-MESSAGE>: End-of-data rejected: Service temporarily unavailable/);
  assert.ok(s.logs.some((l) => l.level === 50 && l.script === join(s.dir, 'scripts', 'data.ts') && /header edits at END-OF-MESSAGE/.test(String(l.msg))));
});
