// Seed 001's Postfix (smtpd_tls_CAfile = the CA followed by its CRL, `cat ca.crt crl.pem`) asking Postern, with
// the CA made and revoked by `postern pki`. Postfix checks no CRL: a revoked certificate is still one it
// verified (checked here with the real smtpd). So `pki revoke` must take the key out of the policy services'
// pin tables, as it does for the listeners' (it did not: the lost laptop kept its account), and a service
// granting what Postfix verified (relayClientCertificates) must know the certificate revoked by its digests,
// which pki.dir's issued.json records (it did not: the lost laptop still relayed, the command only warned).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { needs, run } from '../helpers/example.ts';
import { runCli } from '../helpers/cli.ts';
import { freePort, needsPostfix, startPostfix, type PostfixInstance } from '../helpers/postfix.ts';

const skip = needsPostfix().skip || needs('swaks').skip;
let pki: TestPki;
let pf: PostfixInstance;
let s: TestServer;
let files: string;
let pinsPort: number;
let verifiedPort: number;
const laptop = { cert: '', key: '' };
const cli = (args: string[]) => runCli([...args, '-c', join(s.dir, 'postern.yaml')], { timeoutMs: 120_000 });

before(async () => {
  if (skip) return;
  pki = await makeTestPki();
  files = await mkdtemp(join(tmpdir(), 'postern-pf-revoke-'));
  await chmod(files, 0o755);
  const ca = join(files, 'ca');
  assert.equal((await runCli(['pki', 'init', '--dir', ca, '--name', 'Example Laptops CA'], { timeoutMs: 120_000 })).code, 0);
  await writeFile(join(files, 'server.pem'), (await readFile(pki.server.key, 'utf8')) + (await readFile(pki.server.cert, 'utf8')), { mode: 0o644 });
  const [policyPins, policyVerified] = [await freePort(), await freePort()];
  s = await startTestServer({
    config: `
pki: { dir: ${ca} }
tables: { device_pins: ./device_pins }
policyServices:
  - { name: pins, listen: "127.0.0.1:${policyPins}", authoritative: true, certificateIdentity: { pins: device_pins } }
  - { name: verified, listen: "127.0.0.1:${policyVerified}", authoritative: true, relayClientCertificates: true }
`,
    files: { device_pins: '' },
    scripts: {
      'rcptto.ts': `export default (ctx) => ctx.connection.certificateIdentity || ctx.builtin.accepted ? accept() : reject('Relay access denied', { code: 554 });`,
    },
  });
  const issued = await runCli(['pki', 'issue', 'alice@example.com', '--device', 'laptop', '-c', join(s.dir, 'postern.yaml'), '--out', files], { timeoutMs: 120_000 });
  assert.equal(issued.code, 0, issued.stderr);
  const stem = (await readdir(files)).find((f) => f.startsWith('alice@example.com-laptop-') && f.endsWith('.key'))!.slice(0, -4);
  laptop.cert = join(files, `${stem}.crt`);
  laptop.key = join(files, `${stem}.key`);
  assert.equal((await cli(['pins', 'add', 'alice@example.com', laptop.cert, '--device', 'laptop'])).code, 0);
  // As seed 001 builds it: the CA and its CRL in one file.
  await writeFile(join(files, 'ca+crl.pem'), (await readFile(join(ca, 'ca.crt'), 'utf8')) + (await readFile(join(ca, 'ca.crl'), 'utf8')), { mode: 0o644 });
  pinsPort = await freePort();
  verifiedPort = await freePort();
  pf = await startPostfix('revoke', {
    smtpd_tls_security_level: 'may',
    smtpd_tls_chain_files: join(files, 'server.pem'),
    smtpd_tls_CAfile: join(files, 'ca+crl.pem'),
    smtpd_tls_ask_ccert: 'yes',
    smtpd_tls_fingerprint_digest: 'sha256',
    postern_pins: `check_policy_service inet:127.0.0.1:${policyPins}, reject`,
    postern_verified: `check_policy_service inet:127.0.0.1:${policyVerified}, reject`,
  }, [`127.0.0.1:${pinsPort} inet n - n - - smtpd -o smtpd_relay_restrictions=$postern_pins`,
    `127.0.0.1:${verifiedPort} inet n - n - - smtpd -o smtpd_relay_restrictions=$postern_verified`])
    .catch(async (err: unknown) => { await s.stop(); throw err; });
});
after(async () => {
  await pf?.stop();
  await s?.stop();
  if (files) await rm(files, { recursive: true, force: true });
});

const swaks = (port: number) => run('swaks', ['--server', '127.0.0.1', '--port', String(port), '--tls', '--ehlo', 'laptop.example',
  '--from', 'alice@example.com', '--to', 'r@elsewhere.example', '--quit-after', 'RCPT', '--tls-cert', laptop.cert, '--tls-key', laptop.key]);
const RELAYED = /<~  250 2\.1\.5 Ok/;

test('pki revoke: the key leaves the policy service\'s pin table, and the service granting what Postfix verified knows the certificate revoked', { skip }, async () => {
  assert.match((await swaks(pinsPort)).stdout, RELAYED);
  assert.match((await swaks(verifiedPort)).stdout, RELAYED);

  const reloaded = new Promise((resolve) => { const off = s.reloader.onReload((o) => { off(); resolve(o); }); });
  const revoke = await cli(['pki', 'revoke', 'alice@example.com', '--all']);
  assert.equal(revoke.code, 0, revoke.stderr);
  assert.match(revoke.stdout, new RegExp(`^unpinned alice@example\\.com \\(pin \\S+\\) from ${join(s.dir, 'device_pins').replaceAll('.', '\\.')}$`, 'm'));
  // The services know the revocation (pki.dir is this CA folder): nothing to warn about.
  assert.doesNotMatch(revoke.stderr, /policy service/);
  assert.partialDeepStrictEqual(await reloaded, { ok: true });

  assert.match((await swaks(pinsPort)).stdout, /<~\* 554 .*Relay access denied/);
  // Postfix, its CRL beside the CA (rewritten in place here too), still verifies the certificate and sends it as
  // verified: the service matches its fingerprint against issued.json's revoked entries.
  await writeFile(join(files, 'ca+crl.pem'), (await readFile(join(files, 'ca', 'ca.crt'), 'utf8')) + (await readFile(join(files, 'ca', 'ca.crl'), 'utf8')));
  assert.match((await swaks(verifiedPort)).stdout, /<~\* 554 .*Relay access denied/);
});
