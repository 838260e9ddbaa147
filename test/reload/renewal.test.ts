// Files the configuration names, changed on disk without a configuration edit: a certbot renewal (new files
// in archive/, the live/ symlinks switched one after the other), a CA bundle appended to, a pin table caught
// truncated mid-write. Each complete state is in force at its reload; a broken intermediate one is refused
// and the last good one stays.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdir, readFile, rename, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, clientTlsOptions } from '../helpers/pki.ts';
import { issueServerCertificate } from '../../engine/certificates/index.ts';
import type { ReloadOutcome } from '../../engine/reload/reloader.ts';

/** The outcome of the next reload that found a change. */
const nextReload = (s: TestServer): Promise<ReloadOutcome> => new Promise((resolve) => {
  const stop = s.reloader.onReload((o) => { if (o.changed) { stop(); resolve(o); } });
});

/** ln -sfn as certbot does it: a new link beside the old, renamed over it (one event, never a missing file). */
async function switchLink(link: string, target: string): Promise<void> {
  await symlink(target, `${link}.new`);
  await rename(`${link}.new`, link);
}

test('certbot renewal through live/ symlinks: the new certificate with the old key is refused, the old pair serves; the key switched, the new pair serves', async () => {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const renewed = await issueServerCertificate(pki.authorities.ca, { commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], keyType: 'ecdsa' });
  const s = await startTestServer({
    files: {
      'archive/mx/fullchain1.pem': await readFile(pki.server.cert, 'utf8'), 'archive/mx/privkey1.pem': await readFile(pki.server.key, 'utf8'),
      'archive/mx/fullchain2.pem': renewed.cert + ca, 'archive/mx/privkey2.pem': renewed.key,
    },
    config: `
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ./archive/mx/fullchain1.pem, key: ./archive/mx/privkey1.pem }
`,
  });
  const live = join(s.dir, 'live', 'mx');
  const served = async (): Promise<string> => {
    const c = await SmtpTestClient.connect(s.port('sub'), { implicitTls: { ca } });
    assert.equal((await c.read()).code, 220);
    const fp = new X509Certificate((c.socket as TLSSocket).getPeerCertificate(false).raw).fingerprint256;
    await c.quit();
    return fp;
  };
  try {
    // certbot's layout, and the configuration pointed at its live/ links.
    await mkdir(live, { recursive: true });
    await switchLink(join(live, 'fullchain.pem'), '../../archive/mx/fullchain1.pem');
    await switchLink(join(live, 'privkey.pem'), '../../archive/mx/privkey1.pem');
    let outcome = nextReload(s);
    const config = join(s.dir, 'postern.yaml');
    await writeFile(config, (await readFile(config, 'utf8')).replace('./archive/mx/fullchain1.pem', './live/mx/fullchain.pem').replace('./archive/mx/privkey1.pem', './live/mx/privkey.pem'));
    assert.equal((await outcome).ok, true);
    const first = await served();
    assert.equal(first, new X509Certificate(await readFile(pki.server.cert, 'utf8')).fingerprint256);

    outcome = nextReload(s);
    await switchLink(join(live, 'fullchain.pem'), '../../archive/mx/fullchain2.pem');
    const half = await outcome;
    assert.equal(half.ok, false);
    assert.match(half.errors.join('\n'), /privkey\.pem: private key does not match certificate/);
    assert.equal(await served(), first, 'the last good pair serves');

    outcome = nextReload(s);
    await switchLink(join(live, 'privkey.pem'), '../../archive/mx/privkey2.pem');
    const whole = await outcome;
    assert.equal(whole.ok, true, whole.errors.join('\n'));
    assert.equal(await served(), new X509Certificate(renewed.cert).fingerprint256);
    assert.equal(s.reloader.status.data.lastError, null);
  } finally { await s.stop(); }
});

/** A STARTTLS listener: a session with a certificate named by `pins` (or verified by ca.crt) is logged in; MAIL FROM tells. */
async function startPinnedServer(files: Record<string, string>): Promise<TestServer> {
  return startTestServer({
    files,
    config: `
tables:
  devices: ./devices
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ./server.crt, key: ./server.key, clientCertificates: request, caFiles: [./ca.crt] }
    certificateIdentity: { field: CN, pins: devices, autoLogin: true }
    auth: { required: true }
    limits: { greetingDelayMs: 0 }
`,
  });
}

/** The reply to MAIL FROM on a session that presented `client`'s certificate: 250 logged in, 530 not. */
async function mailFromWith(s: TestServer, client: { ca: string; cert: string; key: string }): Promise<number> {
  const c = await SmtpTestClient.connect(s.port('sub'));
  await c.read();
  await c.command('EHLO x.example');
  await c.starttls(client);
  await c.command('EHLO x.example');
  const code = (await c.command('MAIL FROM:<a@example.test>')).code;
  c.destroy();
  return code;
}

test('a CA appended to the caFiles bundle: its clients are verified from the reload on, the first CA\'s still are', async () => {
  const pki = await makeTestPki();
  const s = await startPinnedServer({
    'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8'),
    'ca.crt': await readFile(pki.ca.cert, 'utf8'), devices: '',
  });
  const stranger = { ...await clientTlsOptions(pki, 'stranger'), ca: await readFile(pki.ca.cert, 'utf8') };
  try {
    assert.equal(await mailFromWith(s, await clientTlsOptions(pki, 'alice')), 250);
    assert.equal(await mailFromWith(s, stranger), 530, 'a certificate of the other CA is not verified yet');
    const outcome = nextReload(s);
    await appendFile(join(s.dir, 'ca.crt'), await readFile(pki.otherCa.cert, 'utf8'));
    assert.equal((await outcome).ok, true);
    assert.equal(await mailFromWith(s, stranger), 250);
    assert.equal(await mailFromWith(s, await clientTlsOptions(pki, 'alice')), 250);
  } finally { await s.stop(); }
});

test('a pin table caught truncated mid-line is refused naming its line; the whole table in force before stays, and the rewrite completes it', async () => {
  const pki = await makeTestPki();
  const device = pki.clients.selfsigned;
  const whole = `# devices\n${pki.clients.ecdsa.pinSha256} carol\n${device.pinSha256} dave\n`;
  const s = await startPinnedServer({
    'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8'),
    'ca.crt': await readFile(pki.ca.cert, 'utf8'), devices: whole,
  });
  const dave = { ...await clientTlsOptions(pki, 'selfsigned'), ca: await readFile(pki.ca.cert, 'utf8') };
  try {
    assert.equal(await mailFromWith(s, dave), 250);
    // Rewritten in place, and read when the writer has written up to the middle of dave's pin.
    let outcome = nextReload(s);
    await writeFile(join(s.dir, 'devices'), whole.slice(0, whole.indexOf(device.pinSha256) + 20));
    const partial = await outcome;
    assert.equal(partial.ok, false);
    assert.match(partial.errors.join('\n'), /devices:3:/);
    assert.equal(await mailFromWith(s, dave), 250, 'the table in force before still names dave');
    outcome = nextReload(s);
    await writeFile(join(s.dir, 'devices'), whole.replace(' dave', ' dave2'));
    assert.equal((await outcome).ok, true);
    assert.equal(await mailFromWith(s, dave), 250);
    assert.equal(s.reloader.status.data.lastError, null);
  } finally { await s.stop(); }
});
