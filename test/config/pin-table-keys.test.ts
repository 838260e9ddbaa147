// A pin table's (or a policy service's relay table's) key that is no fingerprint in any form can never match: a pin
// cut short by a copy, one with a character lost, a login address written where the pin belongs. `postern check`
// (and a start, a reload: the same build) warns, naming the table, its file and each such key's line; a key that
// looks like key material is named by its line alone. The device of that line was refused with no word on why.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { runCli } from '../helpers/cli.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { checkCommand } from '../../engine/cli/check.ts';
import { useScratchDir } from '../helpers/scratch.ts';

let pki: TestPki;
const scratch = useScratchDir('postern-pin-table-keys-');
before(async () => {
  pki = await makeTestPki();
  await mkdir(`${scratch.path}/scripts`);
});

const config = (devices: string, relay = 'relay') => `dataDir: ${scratch.path}/data
scripts: ${scratch.path}/scripts
localDomains: [example.com]
tables: { devices: ${scratch.path}/${devices}, relay: ${scratch.path}/${relay} }
listeners:
  - name: submission
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { pins: devices, autoLogin: true }
policyServices:
  - name: postfix
    listen: 127.0.0.1:0
    fingerprintDigest: sha256
    relayClientCertificatesTable: relay
`;

// A base64 pin ending in an upper-case letter only the upper case may end with: the table keeps its keys
// case-folded, and folded, this one reads as no digest (its hex spelling is the entry that matches).
const UPPER_END = 'MngU5pqnDTuMH08fEjwQSKziwQZT29MijhyWGYgBKlU';

test('pin and relay table keys that are no fingerprint are warned about by line; a key like key material is not quoted', async () => {
  const pin = pki.clients.alice.pinBase64Url;
  await scratch.file('devices', [
    '# devices',
    `${pin}   alice@example.com`,
    `${pin.slice(0, -1)}   bob@example.com`, // the last character lost in a copy: long base64, not shown
    'carol@example.com   carol@example.com', // an address where the pin belongs
    `${pki.clients.ecdsa.pinColon}   ec@example.com`,
    `${UPPER_END}   dave@example.com`,
  ].join('\n') + '\n');
  await scratch.file('relay', `${pki.clients.alice.fingerprintSha256Colon}   laptop\n${pki.clients.alice.fingerprintSha256Colon.slice(0, -3)}   phone\n`);
  const file = await scratch.file('postern.yaml', config('devices'));
  const checked = await runCli(['check', '--config', file]);
  assert.equal(checked.code, 0, checked.stderr);
  assert.match(checked.stderr, new RegExp(`^warning: ${file}:\\d+:\\d+: listeners\\[0\\]\\.certificateIdentity\\.pins: pin table devices \\(${scratch.path}/devices\\) has 2 keys that are no fingerprint in any form, so can never match: line 3 \\(a value that looks like key material: not shown\\), line 4 "carol@example\\.com": a pin is the SHA-256 of the public key`, 'm'));
  assert.ok(!checked.stderr.includes(pin.slice(0, -1)), 'the cut pin is not quoted');
  assert.match(checked.stderr, new RegExp(`^warning: ${file}:\\d+:\\d+: policyServices\\[0\\]\\.relayClientCertificatesTable: relay table relay \\(${scratch.path}/relay\\) has 1 key that is no fingerprint in any form, so can never match: line 2 "${pki.clients.alice.fingerprintSha256Colon.slice(0, 60)}": Postfix sends sha256 fingerprints`, 'm'));

  // The same tables with only fingerprints: nothing to say.
  await scratch.file('devices-good', `${pin}   alice@example.com\n${pki.clients.ecdsa.pinColon}   ec@example.com\n${UPPER_END}   dave@example.com\n`);
  await scratch.file('relay-good', `${pki.clients.alice.fingerprintSha256Colon}   laptop\n`);
  const goodFile = await scratch.file('good.yaml', config('devices-good', 'relay-good'));
  const quiet = await runInProcess(() => checkCommand({ config: goodFile }));
  assert.equal(quiet.code, 0, quiet.stderr);
  assert.ok(!/can never match/.test(quiet.stderr), quiet.stderr);
});
