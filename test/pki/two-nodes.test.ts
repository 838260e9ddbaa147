// Device certificates on two nodes (docs/scaling.md): node A holds the CA folder (`pki issue`, `pki revoke`, the
// account page), node B verifies with a copy of its certificate and CRL, copied over after each change as rsync
// does (a temporary file renamed into place). B's wall clock is five minutes behind A's (libfaketime: a VM
// without NTP). The certificates are dated an hour back for such skews, but the CRL was dated one minute back:
// on B it was "not yet valid", and every certificate of the CA failed with CRL_NOT_YET_VALID until B's clock
// caught up with A's. And a revocation on A holds on B once the CRL is there, not before: per node, as
// documented.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { fakeClock, needsFaketime } from '../helpers/faketime.ts';
import { postern } from './helpers.ts';
import { here } from './in-process.ts';

const skip = needsFaketime;
let pki: TestPki;
let root: string;
/** The CA folder, on node A. */
let ca: string;
/** Node B's copies of ca.crt and ca.crl. */
let copies: string;
let a: ClusterProcess;
let b: ClusterProcess;

const config = (caCert: string, crl: string, name: string): string => `
workers: 1
hostname: ${name}
localDomains: [example.com]
listeners:
  - name: submission
    listen: 127.0.0.1:{PORT:submission}
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${caCert}], crlFiles: [${crl}] }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { field: emailAddress }
`;

/** What rsync does on node B: the file written beside its place, then renamed over it. */
async function copyToB(name: string): Promise<void> {
  await copyFile(join(ca, name), join(copies, `.${name}.tmp`));
  await rename(join(copies, `.${name}.tmp`), join(copies, name));
}

before(async () => {
  if (skip) return;
  pki = await makeTestPki();
  root = await mkdtemp(join(tmpdir(), 'postern-two-nodes-pki-'));
  ca = join(root, 'ca');
  copies = join(root, 'b');
  await mkdir(copies);
  // pki init and issue run their command's function in this process (the same code); the revoke is the command line.
  assert.equal((await here.init(ca)).code, 0);
  await copyToB('ca.crt');
  await copyToB('ca.crl');
  a = await startCluster({ config: `pki: { dir: ${ca} }\n${config(join(ca, 'ca.crt'), join(ca, 'ca.crl'), 'node-a')}` });
  b = await startCluster({ config: config(join(copies, 'ca.crt'), join(copies, 'ca.crl'), 'node-b'), env: fakeClock('-300') });
});

after(async () => {
  await a?.stop();
  await b?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

async function login(node: ClusterProcess, pem: string): Promise<{ client: SmtpTestClient; auth: string }> {
  const client = await SmtpTestClient.connect(node.port('submission'));
  await client.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: pem, key: pem, servername: 'localhost' } });
  return { client, auth: (await client.command('AUTH EXTERNAL =')).text };
}

test('a device certificate issued on node A logs in on node B, whose clock is behind; revoked on A, B refuses it once the CRL is copied', { skip, timeout: 180_000 }, async () => {
  const started = b.logs.find((l) => l.msg === 'supervisor started')!;
  assert.ok(Date.parse(String(started.time)) < Date.now() - 4 * 60_000, `node B's clock is behind (${String(started.time)})`);
  const issued = await here.issue('gina@example.com', { device: 'laptop', dir: ca, out: join(root, 'gina'), json: true });
  assert.equal(issued.code, 0, issued.stderr);
  const pem = await readFile((JSON.parse(issued.stdout) as { files: { pem: string } }).files.pem, 'utf8');
  await copyToB('ca.crl');

  const onA = await login(a, pem);
  assert.equal(onA.auth, '235 2.7.0 Authentication successful');
  const onB = await b.waitFor('node B took the copied CRL', async () => {
    const x = await login(b, pem);
    if (x.auth.startsWith('235')) return x;
    await x.client.quit();
    return null;
  }).catch(() => null);
  const verdict = b.logs.map((l) => JSON.stringify(l)).slice(-6).join("\n");
  assert.ok(onB, `node B refused a valid certificate:\n${verdict}`);

  assert.equal((await postern(['pki', 'revoke', 'gina@example.com', '--device', 'laptop', '--reason', 'keyCompromise', '--dir', ca])).code, 0);
  const refused = await a.waitFor('node A reloaded its CRL', async () => {
    const r = await onA.client.command('MAIL FROM:<gina@example.com>');
    if (r.code === 250) await onA.client.command('RSET');
    return r.code === 250 ? null : r;
  });
  assert.equal(refused.text, '550 5.7.1 Client certificate has been revoked');
  // Node B has not heard of it: its CRL is its own file.
  assert.equal((await onB.client.command('MAIL FROM:<gina@example.com>')).code, 250);
  assert.equal((await onB.client.command('RSET')).code, 250);
  await copyToB('ca.crl');
  const refusedOnB = await b.waitFor('node B reloaded the copied CRL', async () => {
    const r = await onB.client.command('MAIL FROM:<gina@example.com>');
    if (r.code === 250) await onB.client.command('RSET');
    return r.code === 250 ? null : r;
  });
  assert.equal(refusedOnB.text, '550 5.7.1 Client certificate has been revoked');
  const again = await login(b, pem);
  assert.match(again.auth, /^535 /);
  for (const c of [onA.client, onB.client, again.client]) await c.quit();
});
