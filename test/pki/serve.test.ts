// Device certificates under `postern serve` (supervisor, worker processes, queue process): each worker
// records the certificates it saw in its own file and `pki list` merges them; a revocation made with
// `pki revoke` while it runs reaches every worker (new handshakes and open sessions alike).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { postern } from './helpers.ts';
import { here, hereJson } from './in-process.ts';

let pki: TestPki;
let cluster: ClusterProcess;
let root: string;
let ca: string;

before(async () => {
  pki = await makeTestPki();
  root = await mkdtemp(join(tmpdir(), 'postern-pki-serve-'));
  ca = join(root, 'ca');
  // The pki commands but the revoke run their command's function in this process (the same code, a process less each).
  assert.equal((await here.init(ca)).code, 0);
  cluster = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
localDomains: [example.com]
pki: { dir: ${ca} }
listeners:
  - name: submission
    listen: 127.0.0.1:{PORT:submission}
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${join(ca, 'ca.crt')}], crlFiles: [${join(ca, 'ca.crl')}] }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { field: emailAddress }
`,
  });
});
after(async () => {
  await cluster.stop();
  await rm(root, { recursive: true, force: true });
});

async function login(pem: string): Promise<{ client: SmtpTestClient; auth: number }> {
  const client = await SmtpTestClient.connect(cluster.port('submission'));
  await client.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: pem, key: pem, servername: 'localhost' } });
  return { client, auth: (await client.command('AUTH EXTERNAL =')).code };
}

test('serve: workers write their own last-seen files, pki list merges them; a revocation reaches every worker', async () => {
  const config = join(cluster.dir, 'postern.yaml');
  const d = await hereJson<{ certificate: { serial: string }; files: { pem: string } }>(here.issue('gina@example.com', { device: 'laptop', config, json: true }));
  const pem = await readFile(d.files.pem, 'utf8');
  // Several sessions, so that both workers are likely to take some; all stay open.
  const open = await cluster.waitFor('the issued certificate logs in', async () => {
    const sessions = await Promise.all([1, 2, 3, 4].map(() => login(pem)));
    if (sessions.every((x) => x.auth === 235)) return sessions;
    await Promise.all(sessions.map((x) => x.client.quit()));
    return null;
  });
  const files = await cluster.waitFor('a last-seen file is written', async () => {
    // Files being written atomically (`.seen-….tmp`, renamed into place) are not last-seen files yet.
    const names = (await readdir(join(cluster.dataDir, 'certificates')).catch(() => [] as string[])).filter((n) => !n.startsWith('.'));
    return names.length ? names : null;
  });
  assert.ok(files.every((n) => /^seen-worker-\d+\.json$/.test(n)), files.join(' '));
  const list = await hereJson<{ certificates: Array<{ serial: string; seen: { listener: string; verdict: string } | null }> }>(here.list({ config, json: true }));
  assert.deepEqual(list.certificates.find((c) => c.serial === d.certificate.serial)?.seen && {
    listener: list.certificates[0]!.seen!.listener, verdict: list.certificates[0]!.seen!.verdict,
  }, { listener: 'submission', verdict: 'verified' });

  assert.equal((await postern(['pki', 'revoke', 'gina@example.com', '--device', 'laptop', '-c', config])).code, 0);
  // Every open session, whichever worker holds it, is refused at its next MAIL FROM once that worker reloaded.
  for (const x of open) {
    const mail = await cluster.waitFor('the worker reloaded the CRL', async () => {
      const r = await x.client.command('MAIL FROM:<gina@example.com>');
      if (r.code === 250) await x.client.command('RSET');
      return r.code === 250 ? null : r;
    });
    assert.equal(mail.text, '550 5.7.1 Client certificate has been revoked');
    await x.client.quit();
  }
  const again = await login(pem);
  assert.equal(again.auth, 535);
  await again.client.quit();
});
