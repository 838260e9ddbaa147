// Configurations an administrator can plausibly write that would open the server: each is refused, or said
// by `postern check` and the start's log at the line of the key, never taken silently.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { rootCertificates } from 'node:tls';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { runCli } from '../helpers/cli.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { ConfigError } from '../../engine/config/config-error.ts';

let pki: TestPki;
const scratch = useScratchDir('postern-open-by-mistake-');
before(async () => {
  pki = await makeTestPki();
  await mkdir(`${scratch.path}/scripts`);
});

/** `line:column` of `value` in `text`. */
function at(text: string, value: string): string {
  const before = text.slice(0, text.indexOf(value)).split('\n');
  return `${before.length}:${before.at(-1)!.length + 1}`;
}

test('a public CA in a listener\'s caFiles (the system bundle) is refused: any web certificate would verify and relay', async () => {
  // Our CA first, then what `cat /etc/ssl/certs/ca-certificates.crt >> clients-ca.crt` adds: Mozilla's roots.
  // With relayClientCertificates (or a certificate field naming accounts, or EXTERNAL), anyone with a
  // certificate from a public CA (a Let's Encrypt one had clientAuth) would relay as a trusted client.
  const bundle = await scratch.file('clients-ca.crt', (await readFile(pki.ca.cert, 'utf8')) + rootCertificates.slice(0, 3).join('\n') + '\n');
  const text = `dataDir: ${scratch.path}/data
scripts: ${scratch.path}/scripts
listeners:
  - name: submission
    listen: 127.0.0.1:0
    relayClientCertificates: true
    tls:
      mode: starttls
      cert: ${pki.server.cert}
      key: ${pki.server.key}
      clientCertificates: request
      caFiles: [${bundle}]
`;
  const config = await scratch.file('postern.yaml', text);
  const line = new RegExp(`^${config}:${at(text, bundle)}: listeners\\[0\\]\\.tls\\.caFiles\\[0\\]: ${bundle}: ".*" is a public CA \\(the root ".*" of Mozilla's store, or issued by it\\): every certificate it issues, to anyone who asks, would verify as a client's`);
  const checked = await runCli(['check', '--config', config]);
  assert.equal(checked.code, 1, checked.stderr);
  assert.match(checked.stderr, line);
  const sink = new Writable({ write(_chunk, _enc, cb) { cb(); } });
  await assert.rejects(startPostern({ configPath: config, logger: createLogger('info', sink) }), (err: unknown) => {
    assert.ok(err instanceof ConfigError, String(err));
    assert.match(err.message, line);
    return true;
  });

  // Our own CA alone is fine; and delivery may verify next hops against public roots (that is what they are for).
  const own = `dataDir: ${scratch.path}/data
scripts: ${scratch.path}/scripts
listeners:
  - name: submission
    listen: 127.0.0.1:0
    relayClientCertificates: true
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
delivery:
  caFiles: { public: ${bundle} }
`;
  const fine = await runCli(['check', '--config', await scratch.file('own.yaml', own)]);
  assert.equal(fine.code, 0, fine.stderr);
});
