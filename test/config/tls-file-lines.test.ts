// A TLS file that cannot be used is reported at the line of the configuration that names it, with its key
// path, as every other configuration problem is (`<postern.yaml>:<line>:<col>: <key>: <file>: <problem>`):
// the listener's certificate and key, each CA file and CRL file by its index, and delivery's client
// certificates and CA files. `postern check` (a real child process) and a start say the same lines.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
