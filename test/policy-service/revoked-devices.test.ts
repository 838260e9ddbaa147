// A policy service sees a client certificate only as Postfix's digests (no serial), and Postfix checks no CRL: a
// certificate `postern pki revoke` revoked comes as one Postfix verified. The service matches the digests against
// what pki.dir's issued.json revoked, in the service's fingerprintDigest (md5: from the issued copy), and the key's
// digest too (the stolen key in a certificate made elsewhere). The revocation alone (no pin table to rewrite)
// must reload the service: issued.json and ca.crl are watched. Over a real socket, Postfix's attributes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { runCli } from '../helpers/cli.ts';
import { run } from '../helpers/example.ts';
import { until } from '../helpers/wait.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

let s: TestServer;
let files: string;
let laptop: X509Certificate;
let elsewhere: X509Certificate;

const colon = (digest: string, der: Buffer) => createHash(digest).update(der).digest('hex').toUpperCase().match(/../g)!.join(':');
const spki = (c: X509Certificate) => c.publicKey.export({ type: 'spki', format: 'der' });

/** The attributes Postfix sends for a certificate it verified, in `digest`. */
const verified = (c: X509Certificate, digest: string) => ({
  ccert_subject: 'alice@example.com', ccert_issuer: 'Example Laptops CA', ccert_fingerprint: colon(digest, c.raw), ccert_pubkey_fingerprint: colon(digest, spki(c)),
});

before(async () => {
  files = await mkdtemp(join(tmpdir(), 'postern-revoked-devices-'));
  const ca = join(files, 'ca');
  assert.equal((await runCli(['pki', 'init', '--dir', ca, '--name', 'Example Laptops CA'], { timeoutMs: 120_000 })).code, 0);
  s = await startTestServer({
    config: `
pki: { dir: ${ca} }
listeners: [{ name: smtp, listen: 127.0.0.1:0 }]
policyServices:
  - { name: sha256, listen: 127.0.0.1:0, relayClientCertificates: true, certificateIdentity: { field: CN } }
  - { name: md5, listen: 127.0.0.1:0, relayClientCertificates: true, fingerprintDigest: md5 }
`,
    scripts: {
      'rcptto.ts': `export default (ctx) => reject(\`\${ctx.connection.clientCertificate?.verifyError} \${ctx.builtin.accepted} \${ctx.connection.certificateIdentity}\`);`,
    },
  });
  const issued = await runCli(['pki', 'issue', 'alice@example.com', '--device', 'laptop', '-c', join(s.dir, 'postern.yaml'), '--out', files], { timeoutMs: 120_000 });
  assert.equal(issued.code, 0, issued.stderr);
  const stem = (await readdir(files)).find((f) => f.startsWith('alice@example.com-laptop-') && f.endsWith('.key'))!.slice(0, -4);
  laptop = new X509Certificate(await readFile(join(files, `${stem}.crt`)));
  // The stolen key in a self-signed certificate (what a pin or a relay table keyed by the key would take).
  const made = await run('openssl', ['req', '-x509', '-key', join(files, `${stem}.key`), '-subj', '/CN=alice@example.com', '-days', '2', '-out', join(files, 'elsewhere.crt')]);
  assert.equal(made.code, 0, made.output);
  elsewhere = new X509Certificate(await readFile(join(files, 'elsewhere.crt')));
});
after(async () => {
  await s?.stop();
  if (files) await rm(files, { recursive: true, force: true });
});

async function verdict(service: string, attrs: Record<string, string>): Promise<string> {
  const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get(service)!.split(':').pop()) });
  try {
    return (await c.ask(rcptRequest(attrs))).replace(/^action=\S+ (\S+ )?/, '');
  } finally {
    c.close();
  }
}

test('pki revoke alone reloads the policy services, which then take the certificate and its key for revoked in every digest', async () => {
  assert.equal(await verdict('sha256', verified(laptop, 'sha256')), 'null true alice@example.com');
  assert.equal(await verdict('md5', verified(laptop, 'md5')), 'null true null');

  const revoke = await runCli(['pki', 'revoke', 'alice@example.com', '--all', '-c', join(s.dir, 'postern.yaml')], { timeoutMs: 120_000 });
  assert.equal(revoke.code, 0, revoke.stderr);
  assert.doesNotMatch(revoke.stderr, /policy service/);
  // The file watcher's reload, nothing else (the issue's own reload may come first: waited for by its outcome).
  await until('the policy service takes the certificate for revoked', async () => (await verdict('sha256', verified(laptop, 'sha256'))) === 'revoked false null');
  assert.equal(await verdict('md5', verified(laptop, 'md5')), 'revoked false null');
  // Another certificate of the revoked key: revoked too (Postfix would verify it if its CA signed it).
  assert.equal(await verdict('sha256', { ...verified(elsewhere, 'sha256'), ccert_fingerprint: colon('sha256', elsewhere.raw) }), 'revoked false null');
  assert.equal(await verdict('md5', verified(elsewhere, 'md5')), 'revoked false null');
});

test('issued.json unreadable since (damaged, or not readable by the server): the revocations known stay, the reload is taken, and it is said', async () => {
  const issued = join(files, 'ca', 'issued.json');
  const good = await readFile(issued, 'utf8');
  await writeFile(issued, '{ half a file');
  try {
    await until('the warning of the reload', () => s.logs.some((l) => String(l.msg).includes('cannot read what it revoked')), { timeoutMs: 60_000 });
    assert.equal(s.reloader.status.data.lastError, null, 'the reload was taken');
    assert.equal(await verdict('sha256', verified(laptop, 'sha256')), 'revoked false null');
  } finally {
    await writeFile(issued, good);
  }
});
