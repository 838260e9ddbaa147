// postern_tls_certificate_not_after_timestamp_seconds: the server certificate a TLS listener serves, read by a
// real TLS client, against the gauge. Renewed on disk and reloaded, the gauge follows; the files gone, the reload
// is refused, the listener serves the certificate in force (ready), and the gauge still says when that one runs out:
// what the alert on it needs, since nothing else tells that verifying clients will soon fail every handshake.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { issueServerCertificate } from '../../engine/certificates/index.ts';

const cleanup: Array<() => Promise<void>> = [];
after(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => undefined);
});

const SAMPLE = 'postern_tls_certificate_not_after_timestamp_seconds{listener="mx"}';

test('the gauge is the notAfter of the certificate served; it follows a renewal, and stays on the one in force when a reload is refused', async () => {
  const pki = await makeTestPki();
  const dir = await mkdtemp(join(tmpdir(), 'postern-cert-expiry-'));
  cleanup.push(() => rm(dir, { recursive: true, force: true }));
  const cert = join(dir, 'server.crt');
  const key = join(dir, 'server.key');
  const issue = async (days: number): Promise<number> => {
    const notAfter = new Date(Math.floor(Date.now() / 1000 + days * 86400) * 1000);
    const leaf = await issueServerCertificate(pki.authorities.ca, { commonName: 'localhost', dnsNames: ['localhost'], keyType: 'ecdsa', notAfter });
    await writeFile(key, leaf.key, { mode: 0o600 });
    await writeFile(cert, leaf.cert);
    return notAfter.getTime() / 1000;
  };
  const soon = await issue(3);
  const s = await startTestServer({
    config: configYaml({ admin: { listen: '127.0.0.1:0' }, listeners: [testListener('mx', { tls: { mode: 'starttls', cert, key } })] }),
  });
  cleanup.push(() => s.stop());
  const port = s.admin!.address.port;
  /** The notAfter of the certificate the listener serves now, read off a real STARTTLS handshake (Unix seconds). */
  const served = async (): Promise<number> => {
    const c = await SmtpTestClient.connect(s.port('mx'));
    try {
      await c.read();
      await c.command('EHLO client.example');
      const secure = await c.starttls({ ca: await readFile(pki.ca.cert, 'utf8') });
      return Date.parse(secure.getPeerCertificate().valid_to) / 1000;
    } finally {
      c.destroy();
    }
  };
  assert.equal((await scrapeMetrics(port)).get(SAMPLE), soon);
  assert.equal(await served(), soon);

  const renewed = await issue(90);
  assert.equal((await s.reloader.reload('test')).ok, true);
  assert.equal((await scrapeMetrics(port)).get(SAMPLE), renewed);
  assert.equal(await served(), renewed);

  await rm(cert);
  await until('the reload is refused', async () => !(await s.reloader.reload('test')).ok);
  assert.equal((await scrapeMetrics(port)).get(SAMPLE), renewed, 'the certificate in force, not the file');
  assert.equal(await served(), renewed);
});
