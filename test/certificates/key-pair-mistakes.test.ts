/**
 * The certificate/key mistakes an administrator makes when wiring a server certificate, made with the real openssl
 * and checked with the real `postern check`: each line must say what is wrong with the file and what to do.
 *  - a chain concatenated the wrong way round (`cat ca.crt server.crt`): it said `private key does not match
 *    certificate …`, sending the administrator off to look for another key, while the key's certificate is in the
 *    file, only not first;
 *  - a DER certificate (what Windows and many CAs hand out as .cer/.der): it said only `not a PEM certificate`;
 *  - cert and key swapped in the configuration: `not a PEM certificate` for the key file, which holds a key.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';

let dir: string;
const openssl = (...args: string[]): void => { execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] }); };
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-key-pair-'));
  await mkdir(join(dir, 'scripts'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl('req', '-x509', ...ec, '-days', '3650', '-subj', '/CN=Mistakes CA', '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.crt'));
  openssl('req', ...ec, '-subj', '/CN=mail.example.test', '-keyout', join(dir, 'server.key'), '-out', join(dir, 'server.csr'));
  await writeFile(join(dir, 'ext'), 'basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:mail.example.test\n');
  openssl('x509', '-req', '-in', join(dir, 'server.csr'), '-CA', join(dir, 'ca.crt'), '-CAkey', join(dir, 'ca.key'), '-days', '365', '-extfile', join(dir, 'ext'), '-out', join(dir, 'server.crt'));
  openssl('x509', '-in', join(dir, 'server.crt'), '-outform', 'DER', '-out', join(dir, 'server.der'));
  await writeFile(join(dir, 'backwards.crt'), await readFile(join(dir, 'ca.crt'), 'utf8') + await readFile(join(dir, 'server.crt'), 'utf8'));
});
after(() => rm(dir, { recursive: true, force: true }));

async function check(cert: string, key: string): Promise<string> {
  const config = join(dir, 'postern.yaml');
  await writeFile(config, `dataDir: ${join(dir, 'data')}\nscripts: ${join(dir, 'scripts')}\nlisteners:\n  - name: mx\n    listen: 127.0.0.1:0\n    tls: { mode: starttls, cert: ${join(dir, cert)}, key: ${join(dir, key)} }\n`);
  const r = await runCli(['check', '--config', config]);
  assert.equal(r.code, 1, r.stderr);
  return r.stderr.trim();
}

test('a chain with the CA first: the line says the leaf is further down and must come first', async () => {
  const said = await check('backwards.crt', 'server.key');
  assert.match(said, /listeners\[0\]\.tls\.key: .*server\.key: private key does not match the first certificate of .*backwards\.crt \("CN=Mistakes CA"\) but its certificate 2 \("CN=mail\.example\.test"\): the server's certificate must come first, then the chain/);
});

test('a DER certificate: the line says it is DER and how to convert it', async () => {
  const said = await check('server.der', 'server.key');
  assert.match(said, /listeners\[0\]\.tls\.cert: .*server\.der: a DER \(binary\) certificate, not PEM: convert it with openssl x509 -inform DER -in .*server\.der -out .*\.pem/);
});

test('cert and key swapped: each line says what its file holds instead', async () => {
  const said = await check('server.key', 'server.crt');
  assert.match(said, /listeners\[0\]\.tls\.cert: .*server\.key: holds a private key, not a certificate \(are the certificate and key files swapped\?\)/);
});
