// A listener that trusts the CA of pki.dir but does not load the CRL `postern pki revoke` rewrites took a revoked
// certificate as before: a lost laptop, revoked, still logged in (autoLogin) and relayed, while the command said
// the server applies the revocation. Now the command says so, and a start and check refuse it. A reload whose
// configuration in force already had that gap takes it with a warning: refusing it kept the CRL from before the
// revocation on every listener, so the revoked laptop still logged in on the listener that does load the CRL.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { externalLogin, postern, startPkiServer } from './helpers.ts';
import { until } from '../helpers/wait.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { checkCommand } from '../../engine/cli/check.ts';
import { pkiIssueCommand, pkiRevokeCommand } from '../../engine/cli/pki.ts';

let pki: TestPki;
const scratch = useScratchDir('postern-crl-not-loaded-');
before(async () => { pki = await makeTestPki(); });

// Once a command's output is shown by the real command line, its next runs are its function in this process (same code).
const checkHere = (config: string) => runInProcess(() => checkCommand({ config }));
const revokeAllHere = (identity: string, config: string) => runInProcess(() => pkiRevokeCommand(identity, { all: true, config }));

/** A CA folder made by `pki init`, once, for the two tests that run no server (the second revokes after the first). */
let caFolder: Promise<string> | undefined;
const sharedCa = (): Promise<string> => caFolder ??= (async () => {
  const ca = join(scratch.path, 'ca');
  assert.equal((await postern(['pki', 'init', '--dir', ca, '--name', 'Example Mail CA'])).code, 0);
  return ca;
})();

test('trusting pki.dir\'s CA (a copy of ca.crt too) without its CRL: a warning, and once it revokes anything a refusal, at the key\'s line', async () => {
  const ca = await sharedCa();
  await mkdir(join(scratch.path, 'scripts'), { recursive: true });
  // The administrator copied the CA certificate to /etc/postern and forgot crlFiles.
  const copy = join(scratch.path, 'clients-ca.crt');
  await copyFile(join(ca, 'ca.crt'), copy);
  const text = (crl: string) => `dataDir: ${scratch.path}/data
scripts: ${scratch.path}/scripts
localDomains: [example.com]
pki: { dir: ${ca} }
listeners:
  - name: submission
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${copy}]${crl} }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { field: emailAddress, autoLogin: true }
    senderLogin: { enforce: true }
  - name: inbound
    listen: 127.0.0.1:0
`;
  const config = await scratch.file('postern.yaml', text(''));
  const before = text('').slice(0, text('').indexOf(`[${copy}]`)).split('\n');
  const line = `${config}:${before.length}:${before.at(-1)!.length + 1}: listeners[0].tls.caFiles: trusts the CA of ${ca} but does not load its CRL ${join(ca, 'ca.crl')}`;

  const none = await postern(['check', '--config', config]);
  assert.equal(none.code, 0, none.stderr);
  assert.ok(none.stderr.includes(`warning: ${line}: a certificate revoked by postern pki revoke or the account page would still verify here; add it to tls.crlFiles`), none.stderr);

  assert.equal((await runInProcess(() => pkiIssueCommand('alice@example.com', { device: 'laptop', config, out: scratch.path }))).code, 0);
  const revoke = await postern(['pki', 'revoke', 'alice@example.com', '--all', '-c', config]);
  assert.equal(revoke.code, 0, revoke.stderr);
  assert.match(revoke.stdout, /^revoked alice@example\.com \(device laptop\)/m);
  assert.equal(revoke.stderr, `warning: listener submission trusts this CA but does not load ${join(ca, 'ca.crl')}: the revocation has no effect there; add it to its tls.crlFiles\n`);

  const revoked = await postern(['check', '--config', config]);
  assert.equal(revoked.code, 1, revoked.stderr);
  assert.equal(revoked.stderr, `${line}, which revokes 1 certificate: here they would still verify (log in, relay); add it to tls.crlFiles\n`);

  // Loaded (by its path: a copy of the CRL would not see the next revocation): nothing to say.
  const fixed = await checkHere(await scratch.file('postern.yaml', text(`, crlFiles: [${join(ca, 'ca.crl')}]`)));
  assert.equal(fixed.code, 0, fixed.stderr);
  assert.equal(fixed.stderr, '');
  const again = await revokeAllHere('alice@example.com', config);
  assert.equal(again.code, 0, again.stderr);
  assert.equal(again.stderr, '');
});

test('a running server with such a listener: the revocation reloads all the same, and the listeners loading the CRL refuse the certificate', async () => {
  const { server, config } = await startPkiServer(pki, (ca) => `  - name: nocrl
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${join(ca, 'ca.crt')}] }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { field: emailAddress }
`);
  try {
    const issued = await runInProcess(() => pkiIssueCommand('alice@example.com', { device: 'laptop', config, json: true }));
    const files = (JSON.parse(issued.stdout) as { files: { cert: string; key: string } }).files;
    const laptop = { cert: await readFile(files.cert, 'utf8'), key: await readFile(files.key, 'utf8') };
    const external = (listener: string): Promise<number> => externalLogin(server, listener, pki, laptop);
    assert.equal(await external('submission'), 235, 'logs in before (the test can fail)');
    const revoke = await postern(['pki', 'revoke', 'alice@example.com', '--all', '-c', config]);
    assert.equal(revoke.code, 0, revoke.stderr);
    assert.match(revoke.stderr, /listener nocrl trusts this CA but does not load/);
    await until('the listener that loads the CRL refuses the revoked certificate', async () => (await external('submission')) === 535, { timeoutMs: 60_000 });
    assert.equal(server.reloader.status.data.lastError, null);
    assert.equal(await external('nocrl'), 235, 'what the warning says: the listener without the CRL still takes it');
  } finally {
    await server.stop();
  }
});

// A published copy of ca.crl (the administrator's /etc/postern, the CA's web server) is the CA's CRL too: `postern
// check` warned "does not load its CRL" for a faithful copy, and once pki revoke made the copy older refused the
// configuration (so a server could not start). A copy is now taken for the CRL: nothing said while it holds what
// the CA revoked, and while it lacks a revocation the listener is served ca.crl in its place, with a warning naming
// the copy and the serial it lacks.
test('a copy of pki.dir\'s CRL loads it: nothing to say while faithful, a warning naming it and what it lacks once older', async () => {
  const ca = await sharedCa();
  await mkdir(join(scratch.path, 'scripts'), { recursive: true });
  const published = join(scratch.path, 'published-ca.crl');
  await copyFile(join(ca, 'ca.crl'), published);
  const config = await scratch.file('copy.yaml', `dataDir: ${scratch.path}/data
scripts: ${scratch.path}/scripts
localDomains: [example.com]
pki: { dir: ${ca} }
listeners:
  - name: submission
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${join(ca, 'ca.crt')}], crlFiles: [${published}] }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { field: emailAddress, autoLogin: true }
    senderLogin: { enforce: true }
`);
  const faithful = await postern(['check', '--config', config]);
  assert.equal(faithful.code, 0, faithful.stderr);
  assert.equal(faithful.stderr, '');

  const issuedOut = await runInProcess(() => pkiIssueCommand('alice@example.com', { device: 'laptop', config, out: scratch.path, json: true }));
  const issued = JSON.parse(issuedOut.stdout) as { certificate: { serial: string } };
  const revoke = await postern(['pki', 'revoke', 'alice@example.com', '--all', '-c', config]);
  assert.equal(revoke.code, 0, revoke.stderr);
  assert.equal(revoke.stderr, `warning: listener submission loads a copy of this CA's CRL (${published}), which lacks the revocation: copy ${join(ca, 'ca.crl')} there again; the server serves ${join(ca, 'ca.crl')} in its place meanwhile\n`);
  const older = await checkHere(config);
  assert.equal(older.code, 0, older.stderr);
  assert.match(older.stderr, new RegExp(`^warning: ${published}: older than the CA's own CRL ${join(ca, 'ca.crl')} \\(issued .*\\): it lacks the revocation of 1 certificate \\(serial ${issued.certificate.serial}\\); served with ${join(ca, 'ca.crl')} in its place \\(they are refused\\) until the copy is republished\\n$`));

  await copyFile(join(ca, 'ca.crl'), published);
  const republished = await checkHere(config);
  assert.equal(republished.code, 0, republished.stderr);
  assert.equal(republished.stderr, '');
});
