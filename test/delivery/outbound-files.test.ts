// A missing or mismatched outbound key, or a certificate TLS would refuse to present, is a configuration error:
// the server refuses to start on it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, copyFile, readFile, writeFile } from 'node:fs/promises';
import { createPrivateKey } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { issueClientCertificate } from '../../engine/certificates/index.ts';

test('the server does not start with an unreadable or mismatched outbound client certificate', async () => {
  const pki = await makeTestPki();
  const dir = await mkdtemp(join(tmpdir(), 'postern-outbound-'));
  await copyFile(pki.clients.alice.cert, join(dir, 'laptop.crt'));
  await copyFile(pki.clients.bob.key, join(dir, 'laptop.key'));
  const config = (key: string): string => `
dataDir: ${dir}/data
listeners: [{ name: in, listen: "127.0.0.1:0" }]
delivery:
  route: { smarthost: { host: 127.0.0.1, port: 2525 } }
  clientCertificates: { laptop: { cert: ./laptop.crt, key: ${key} } }
`;
  const start = (key: string) => startPostern({ configText: config(key), baseDir: dir, watch: false, logger: createLogger('silent') });
  // Named at the key's line of the configuration (here inline text: `(inline)`), then the file.
  await assert.rejects(start('./missing.key'), /^GenerationError: \(inline\):6:60: delivery\.clientCertificates\.laptop\.key: \S*missing\.key: cannot read/);
  await assert.rejects(start('./laptop.key'), /^GenerationError: \(inline\):6:60: delivery\.clientCertificates\.laptop\.key: \S*laptop\.key: private key does not match certificate/);
  await copyFile(pki.clients.alice.key, join(dir, 'laptop.key'));
  const running = await start('./laptop.key');
  await running.close();
});

test('a client certificate whose key TLS refuses (RSA 1024) is refused at start, not at every delivery', async () => {
  // It used to pass every check and then fail each handshake: deferred for ever in encrypt mode, and in may mode
  // sent in plaintext without the certificate by the retry that follows a failed handshake.
  const pki = await makeTestPki();
  const dir = await mkdtemp(join(tmpdir(), 'postern-outbound-'));
  const old = await issueClientCertificate(pki.authorities.ca, { commonName: 'old-device', rsaBits: 1024 });
  await writeFile(join(dir, 'old.crt'), old.cert);
  await writeFile(join(dir, 'old.key'), old.key);
  const configText = `
dataDir: ${dir}/data
listeners: [{ name: in, listen: "127.0.0.1:0" }]
delivery:
  route: { smarthost: { host: 127.0.0.1, port: 2525 } }
  clientCertificates: { old: { cert: ./old.crt, key: ./old.key } }
`;
  await assert.rejects(startPostern({ configText, baseDir: dir, watch: false, logger: createLogger('silent') }),
    /^GenerationError: \(inline\):6:38: delivery\.clientCertificates\.old\.cert: \S*old\.crt: certificate "CN=old-device" has a 1024-bit RSA key, which TLS refuses to present \(OpenSSL security level 2: RSA at least 2048 bits/);
});

test('a passphrase-protected client key is refused at start with a message that says so', async () => {
  // OpenSSL's own word for it, with no passphrase to ask for, was "interrupted or cancelled".
  const pki = await makeTestPki();
  const dir = await mkdtemp(join(tmpdir(), 'postern-outbound-'));
  await copyFile(pki.clients.alice.cert, join(dir, 'laptop.crt'));
  const key = createPrivateKey(await readFile(pki.clients.alice.key, 'utf8'));
  await writeFile(join(dir, 'pkcs8.key'), key.export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'secret' }));
  // The traditional form (Proc-Type: 4,ENCRYPTED), as `openssl rsa -aes256 -traditional` writes it.
  await writeFile(join(dir, 'plain.key'), key.export({ type: 'pkcs1', format: 'pem' }));
  execFileSync('openssl', ['rsa', '-in', join(dir, 'plain.key'), '-aes256', '-traditional', '-passout', 'pass:secret', '-out', join(dir, 'traditional.key')], { stdio: 'ignore' });
  assert.match(await readFile(join(dir, 'traditional.key'), 'utf8'), /Proc-Type: 4,ENCRYPTED/);
  for (const file of ['pkcs8.key', 'traditional.key']) {
    const configText = `
dataDir: ${dir}/data
listeners: [{ name: in, listen: "127.0.0.1:0" }]
delivery:
  route: { smarthost: { host: 127.0.0.1, port: 2525 } }
  clientCertificates: { laptop: { cert: ./laptop.crt, key: ./${file} } }
`;
    await assert.rejects(startPostern({ configText, baseDir: dir, watch: false, logger: createLogger('silent') }),
      new RegExp(`^GenerationError: \\(inline\\):6:\\d+: delivery\\.clientCertificates\\.laptop\\.key: \\S*${file.replace('.', '\\.')}: the private key is encrypted \\(passphrase-protected\\), and Postern takes no passphrase`), file);
  }
});
