// What a real Postfix smtpd sends a policy service about a client certificate, and what Postern makes of it:
// the subject and issuer CN as xtext (SMTPD_POLICY_README: `ccert_issuer=Wietse+20Venema`), and fingerprints in
// the digest of Postfix's smtpd_tls_fingerprint_digest, which need not be the service's.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { needs, run } from '../helpers/example.ts';
import { freePort, needsPostfix, startPostfix, type PostfixInstance } from '../helpers/postfix.ts';
import { until } from '../helpers/wait.ts';
import { issueClientCertificate } from '../../engine/certificates/index.ts';

const skip = needsPostfix().skip || needs('swaks').skip;
let pki: TestPki;
let pf: PostfixInstance;
let s: TestServer;
let files: string;
/** smtpd with smtpd_tls_fingerprint_digest = sha256 (the service's), and one left at md5. */
let sha256Port: number;
let md5Port: number;
const client = { cert: '', key: '' };

before(async () => {
  if (skip) return;
  pki = await makeTestPki();
  files = await mkdtemp(join(tmpdir(), 'postern-pf-attrs-'));
  await chmod(files, 0o755);
  await writeFile(join(files, 'server.pem'), (await readFile(pki.server.key, 'utf8')) + (await readFile(pki.server.cert, 'utf8')), { mode: 0o644 });
  // A CN that is an account name outside ASCII; the test CA's own CN ("Postern Test CA") has spaces.
  const jöran = await issueClientCertificate(pki.authorities.ca, { commonName: 'jöran@example.com', keyType: 'ecdsa' });
  await writeFile(client.cert = join(files, 'joran.crt'), jöran.cert);
  await writeFile(client.key = join(files, 'joran.key'), jöran.key);
  const policyPort = await freePort();
  sha256Port = await freePort();
  md5Port = await freePort();
  pf = await startPostfix('attrs', {
    smtpd_tls_security_level: 'may',
    smtpd_tls_chain_files: join(files, 'server.pem'),
    smtpd_tls_CAfile: pki.ca.cert,
    smtpd_tls_ask_ccert: 'yes',
    smtpd_tls_fingerprint_digest: 'sha256',
    smtpd_relay_restrictions: `check_policy_service inet:127.0.0.1:${policyPort}, reject_unauth_destination`,
  }, [`127.0.0.1:${sha256Port} inet n - n - - smtpd`,
    // What Postfix computes below compatibility_level 3.6 when main.cf does not say.
    `127.0.0.1:${md5Port} inet n - n - - smtpd -o smtpd_tls_fingerprint_digest=md5`]);
  s = await startTestServer({
    config: `
policyServices:
  - name: postfix
    listen: 127.0.0.1:${policyPort}
    authoritative: true
    certificateIdentity: { field: CN }
    relayClientCertificatesTable: relay_clientcerts
tables: { relay_clientcerts: ./relay_clientcerts }
`,
    // An md5 relay_clientcerts kept from before compatibility_level 3.6, while Postfix now sends sha256.
    files: { relay_clientcerts: `${pki.clients.alice.fingerprintMd5.toUpperCase().match(/../g)!.join(':')}   laptop.example\n` },
    scripts: {
      'rcptto.ts': `
export default function (ctx) {
  const cert = ctx.connection.clientCertificate;
  log('subject=' + cert?.subject.CN + ' dn=' + cert?.subject.dn + ' issuer=' + cert?.issuer.CN + ' identity=' + ctx.connection.certificateIdentity);
  return ctx.connection.certificateIdentity ? accept() : reject('no certificate identity', { code: 554 });
}`,
    },
  }).catch(async (err: unknown) => { await pf.stop(); throw err; });
});
after(async () => {
  await s?.stop();
  await pf?.stop();
  if (files) await rm(files, { recursive: true, force: true });
});

const swaks = (port: number) => run('swaks', ['--server', '127.0.0.1', '--port', String(port), '--tls', '--ehlo', 'laptop.example',
  '--from', 'jöran@example.com', '--to', 'r@elsewhere.example', '--quit-after', 'RCPT', '--tls-cert', client.cert, '--tls-key', client.key]);

test('the CNs Postfix sends as xtext are the certificate\'s names: a non-ASCII CN names its account, the issuer keeps its spaces', { skip }, async () => {
  const r = await swaks(sha256Port);
  assert.equal(r.code, 0, r.output);
  assert.match(r.stdout, /<~  250 2\.1\.5 Ok/);
  assert.ok(s.logs.some((l) => l.msg === 'subject=jöran@example.com dn=CN=jöran@example.com issuer=Postern Test CA identity=jöran@example.com'),
    JSON.stringify(s.logs.filter((l) => String(l.msg).startsWith('subject='))));
});

test('fingerprints in another digest than fingerprintDigest: the certificate is ignored, and the log says which digest Postfix used', { skip }, async () => {
  const r = await swaks(md5Port);
  assert.match(r.stdout, /<~\* 554 .*no certificate identity/, r.output);
  const warning = () => s.logs.find((l) => l.level === 40 && /ccert_fingerprint is an md5 digest, but fingerprintDigest is sha256/.test(String(l.msg)));
  await until('the digest warning', () => warning() !== undefined);
  assert.match(String(warning()!.msg), /smtpd_tls_fingerprint_digest/);
  // Once: Postfix sends the same in every request.
  await swaks(md5Port);
  assert.equal(s.logs.filter((l) => /fingerprintDigest is sha256/.test(String(l.msg))).length, 1);
});

test('a relay table in another digest than fingerprintDigest is warned about at start: its keys can never match', { skip }, () => {
  const warning = s.logs.find((l) => l.level === 40 && /relay table relay_clientcerts .* can never match/.test(String(l.msg)));
  assert.ok(warning, JSON.stringify(s.logs.filter((l) => l.level === 40)));
  assert.match(String(warning.msg), new RegExp(`${pki.clients.alice.fingerprintMd5} \\(md5\\).*fingerprintDigest sha256`));
  assert.match(String(warning.msg), /postern\.yaml:\d+:\d+: policyServices\[0\]\.relayClientCertificatesTable/);
});
