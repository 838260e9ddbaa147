// A TLS file that cannot be used is reported at the line of the configuration that names it, with its key
// path, as every other configuration problem is (`<postern.yaml>:<line>:<col>: <key>: <file>: <problem>`):
// the listener's certificate and key, each CA file and CRL file by its index, and delivery's client
// certificates and CA files. `postern check` (a real child process) and a start say the same lines.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { Writable } from 'node:stream';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { runCli } from '../helpers/cli.ts';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { ConfigError } from '../../engine/config/config-error.ts';

let pki: TestPki;
let dir: string;
before(async () => {
  pki = await makeTestPki();
  dir = await mkdtemp(join(tmpdir(), 'postern-tls-lines-'));
});
after(() => rm(dir, { recursive: true, force: true }));

test('unusable TLS files: each problem names the configuration file, line, column and key, then the file', async () => {
  const config = join(dir, 'postern.yaml');
  const missing = join(dir, 'missing.crt');
  await mkdir(join(dir, 'scripts'));
  const text = `dataDir: ${join(dir, 'data')}
scripts: ${join(dir, 'scripts')}
listeners:
  - name: mismatched
    listen: 127.0.0.1:0
    tls:
      mode: starttls
      cert: ${pki.server.cert}
      key: ${pki.clients.alice.key}
  - name: trust
    listen: 127.0.0.1:0
    tls:
      mode: starttls
      cert: ${pki.server.cert}
      key: ${pki.server.key}
      clientCertificates: request
      caFiles: [${pki.ca.cert}, ${pki.clients.bob.key}]
  - name: crl
    listen: 127.0.0.1:0
    tls:
      mode: implicit
      cert: ${pki.server.cert}
      key: ${pki.server.key}
      clientCertificates: request
      caFiles: [${pki.ca.cert}]
      crlFiles:
        - ${pki.crl}
        - ${pki.otherCa.crl}
delivery:
  clientCertificates:
    laptop: { cert: ${missing}, key: ${pki.clients.alice.key} }
  caFiles:
    partner: ${pki.clients.alice.key}
`;
  await writeFile(config, text);
  /** `line:column` of the n-th occurrence of `value` in the configuration (n from 0). */
  const at = (value: string, n = 0): string => {
    let offset = -1;
    for (let i = 0; i <= n; i++) offset = text.indexOf(value, offset + 1);
    const before = text.slice(0, offset).split('\n');
    return `${before.length}:${before.at(-1)!.length + 1}`;
  };
  const expected = [
    `${config}:${at(pki.clients.alice.key)}: listeners[0].tls.key: ${pki.clients.alice.key}: private key does not match certificate ${pki.server.cert}`,
    // A private key named as a CA file: refused without a word of it.
    `${config}:${at(pki.clients.bob.key)}: listeners[1].tls.caFiles[1]: ${pki.clients.bob.key}: not a PEM certificate`,
    `${config}:${at(pki.otherCa.crl)}: listeners[2].tls.crlFiles[1]: ${pki.otherCa.crl}: CRL issued by "CN=Other CA" is not signed by any configured CA`,
    `${config}:${at(missing)}: delivery.clientCertificates.laptop.cert: ${missing}: cannot read: ENOENT`,
    `${config}:${at(pki.clients.alice.key, 2)}: delivery.caFiles.partner: ${pki.clients.alice.key}: not a PEM certificate`,
  ];
  const checked = await runCli(['check', '--config', config]);
  assert.equal(checked.code, 1);
  assert.deepEqual(checked.stderr.split('\n').filter((l) => l && !l.startsWith('warning: ')), expected);

  const sink = new Writable({ write(_chunk, _enc, cb) { cb(); } });
  await assert.rejects(startPostern({ configPath: config, logger: createLogger('info', sink) }), (err: unknown) => {
    assert.ok(err instanceof ConfigError, String(err));
    assert.deepEqual(err.message.split('\n'), expected);
    return true;
  });
});

/** `text` with a character OpenSSL's PEM reader refuses put into the base64 of its PEM block number `block` (from 0). */
function corrupted(text: string, block: number): string {
  let at = -1;
  for (let i = 0; i <= block; i++) at = text.indexOf('-----BEGIN', at + 1);
  const bodyLine = text.indexOf('\n', at) + 1;
  return `${text.slice(0, bodyLine + 10)}*${text.slice(bodyLine + 10)}`;
}

test('TLS material OpenSSL refuses (a chain certificate or a CA of a bundle it cannot read, a key pair it will not use) is named by its file, place and line, not met at start', async () => {
  // A base64 decode skips the `*`; OpenSSL, which reads these files for the listener, does not: the check passed, and
  // each process then failed to start (a chain certificate: `bad base64 decode` with a stack trace) or left the CA out,
  // silently. A reload took the file too, so the next worker replaced (or the next start) failed.
  await mkdir(join(dir, 'scripts'), { recursive: true });
  const leaf = await readFile(pki.server.cert, 'utf8');
  const ca = await readFile(pki.ca.cert, 'utf8');
  const chainText = corrupted(leaf + ca, 1);
  const bundleText = corrupted(ca + await readFile(pki.otherCa.cert, 'utf8'), 1);
  // And a key pair OpenSSL refuses as a whole (an RSA key of 512 bits: `ee key too small`), each file readable.
  const weak = { cert: join(dir, 'weak.crt'), key: join(dir, 'weak.key') };
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:512', '-nodes', '-keyout', weak.key, '-out', weak.cert, '-days', '30', '-subj', '/CN=localhost'], { stdio: 'ignore' });
  const chain = await scratch('chain.crt', chainText);
  const bundle = await scratch('bundle.crt', bundleText);
  const config = join(dir, 'openssl.yaml');
  const text = `dataDir: ${join(dir, 'data')}
scripts: ${join(dir, 'scripts')}
listeners:
  - name: chain
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${chain}, key: ${pki.server.key} }
  - name: bundle
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${bundle}] }
  - name: weak
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ${weak.cert}, key: ${weak.key} }
`;
  await writeFile(config, text);
  const at = (value: string): string => {
    const before = text.slice(0, text.indexOf(value)).split('\n');
    return `${before.length}:${before.at(-1)!.length + 1}`;
  };
  const expected = [
    new RegExp(`^${escape(config)}:${at(chain)}: listeners\\[0\\]\\.tls\\.cert: ${escape(chain)}: certificate 2 of ${blocks(chainText)} \\(line ${beginLine(chainText, 1)}\\): unreadable certificate: .*bad base64 decode$`),
    new RegExp(`^${escape(config)}:${at(bundle)}: listeners\\[1\\]\\.tls\\.caFiles\\[0\\]: ${escape(bundle)}: certificate 2 of ${blocks(bundleText)} \\(line ${beginLine(bundleText, 1)}\\): unreadable certificate: .*bad base64 decode$`),
    new RegExp(`^${escape(config)}:${at(weak.cert)}: listeners\\[2\\]\\.tls\\.cert: ${escape(weak.cert)}: OpenSSL refuses this certificate with its key ${escape(weak.key)}: .*ee key too small$`),
  ];
  const checked = await runCli(['check', '--config', config]);
  assert.equal(checked.code, 1);
  const lines = checked.stderr.split('\n').filter((l) => l && !l.startsWith('warning: '));
  assert.equal(lines.length, expected.length, checked.stderr);
  lines.forEach((l, i) => assert.match(l, expected[i]!));

  const sink = new Writable({ write(_chunk, _enc, cb) { cb(); } });
  await assert.rejects(startPostern({ configPath: config, logger: createLogger('info', sink) }), (err: unknown) => {
    assert.ok(err instanceof ConfigError, String(err));
    err.message.split('\n').forEach((l, i) => assert.match(l, expected[i]!));
    return true;
  });
});

const blocks = (text: string): number => text.split('-----BEGIN').length - 1;

/** The line (from 1) of the BEGIN of PEM block number `block` (from 0). */
function beginLine(text: string, block: number): number {
  let at = -1;
  for (let i = 0; i <= block; i++) at = text.indexOf('-----BEGIN', at + 1);
  return text.slice(0, at).split('\n').length;
}

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

async function scratch(name: string, content: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, content);
  return file;
}
