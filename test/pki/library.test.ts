// engine/pki as an account page would call it, on real files: revoking by certificate (and refusing a
// foreign one), the development PKI (no inventory; its CRL's entries kept), the pin-table editor keeping
// the file's other lines, and the configuration lookups.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { X509Certificate } from 'node:crypto';
import { addPin, pinOf, initCa, issueDevice, listDevices, listPins, pinTableOf, pkiDirOf, readInventory, removePin, revokeDevice } from '../../engine/pki/index.ts';
import { createSelfSignedCertificate, writeDevelopmentPki } from '../../engine/certificates/index.ts';
import { parseConfig } from '../../engine/config/load-config.ts';
import { loadTable } from '../../engine/policy/lookup-tables.ts';
import { makeTestPki } from '../helpers/pki.ts';

const run = promisify(execFile);

async function scratch<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-pkilib-'));
  try { return await fn(dir); } finally { await rm(dir, { recursive: true, force: true }); }
}

test('revokeDevice by certificate PEM: listed by the CRL (openssl agrees); a certificate of another CA is refused', () => scratch(async (dir) => {
  const ca = join(dir, 'ca');
  await initCa(ca);
  const d = await issueDevice(ca, { identity: 'Hal@Example.com', device: 'phone', p12Password: 'x' });
  assert.equal(d.record.identity, 'hal@example.com');
  const r = await revokeDevice(ca, { certificatePem: d.certPem }, { reason: 'superseded' });
  assert.deepEqual(r.revoked.map((c) => c.serial), [d.record.serial]);
  await writeFile(join(dir, 'leaf.crt'), d.certPem);
  const verify = await run('openssl', ['verify', '-crl_check', '-CAfile', join(ca, 'ca.crt'), '-CRLfile', join(ca, 'ca.crl'), join(dir, 'leaf.crt')])
    .then(() => 'ok', (e: { stdout: string; stderr: string }) => e.stdout + e.stderr);
  assert.match(verify, /certificate revoked/);
  const pki = await makeTestPki();
  await assert.rejects(revokeDevice(ca, { certificatePem: await readFile(pki.clients.alice.cert, 'utf8') }), /was not issued by this CA/);
  assert.deepEqual((await listDevices(ca)).map((x) => [x.identity, x.status]), [['hal@example.com', 'revoked']]);
  await assert.rejects(revokeDevice(ca, { identity: 'nobody@example.com' }), /no certificate of nobody@example\.com/);
}));

test('the development PKI: found through caFiles, issued from, and its CRL\'s earlier entries kept', () => scratch(async (dir) => {
  const dev = await writeDevelopmentPki(join(dir, 'pki'), { hostname: 'localhost', demoUser: { name: 'demo', email: 'demo@example.test' } });
  const config = parseConfig(`
listeners:
  - name: submission
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ./pki/server.crt, key: ./pki/server.key, clientCertificates: request, caFiles: [./pki/ca.crt], crlFiles: [./pki/ca.crl] }
`, join(dir, 'postern.yaml'), dir).config;
  const found = pkiDirOf(config);
  assert.equal(found, join(dir, 'pki'));
  // Revoke the demo certificate (never in an inventory), then issue: the CRL still lists the demo.
  const demo = await readFile(dev.clientCert, 'utf8');
  const r = await revokeDevice(found, { certificatePem: demo });
  assert.ok(r.unrecorded);
  await issueDevice(found, { identity: 'new@example.test', p12Password: 'x' });
  const crl = await run('openssl', ['crl', '-in', dev.crl, '-noout', '-text']);
  assert.match(crl.stdout, new RegExp(`Serial Number: ${r.unrecorded!.toUpperCase()}`));
  assert.equal((await readInventory(found)).otherRevoked.length, 1);
  assert.throws(() => pkiDirOf(parseConfig('listeners: [{ name: x, listen: "127.0.0.1:0" }]\n', join(dir, 'x.yaml'), dir).config), /set pki\.dir/);
}));

test('pin tables: add and remove keep the other lines and comments; the table still loads; pinTableOf names the table', () => scratch(async (dir) => {
  const file = join(dir, 'device_keys');
  const other = 'xTBj5asdYMuqEUybF0KcR-_f1xRD264s9PKF6M-jqNs';
  await writeFile(file, `# my devices\n${other}  mjl@mox.example  mjl-laptop@mox.example\n`);
  const phone = await createSelfSignedCertificate({ commonName: 'phone' });
  const added = await addPin(file, { identity: 'ann@mox.example', certificateOrPin: phone.cert, device: 'phone' });
  // The same key in another spelling is refused.
  await assert.rejects(addPin(file, { identity: 'bo@mox.example', certificateOrPin: Buffer.from(added.pinSha256, 'hex').toString('base64') }), /already pinned, for ann@mox\.example/);
  const pins = await listPins(file);
  assert.deepEqual(pins.map((p) => [p.identity, p.device, p.senders]), [['mjl@mox.example', null, ['mjl-laptop@mox.example']], ['ann@mox.example', 'phone', []]]);
  const table = await loadTable('device_keys', file);
  assert.equal(table.get(added.pinSha256), 'ann@mox.example');
  assert.deepEqual((await removePin(file, { pin: phone.cert })).map((p) => p.identity), ['ann@mox.example']);
  assert.equal(await readFile(file, 'utf8'), `# my devices\n${other}  mjl@mox.example  mjl-laptop@mox.example\n`);
  assert.deepEqual(await removePin(file, { identity: 'nobody@mox.example' }), []);
  // A public key alone (what a device may upload, mox style) pins the same key as its certificate.
  const spkiPem = new X509Certificate(phone.cert).publicKey.export({ type: 'spki', format: 'pem' }).toString();
  assert.equal(pinOf(spkiPem), added.pinSha256);
  assert.equal((await addPin(file, { identity: 'ann@mox.example', certificateOrPin: spkiPem })).pinSha256, added.pinSha256);
  assert.throws(() => pinOf('-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIP\n-----END PRIVATE KEY-----\n'), /not a certificate or public key/);
  // A key too weak to trust is refused, as a certificate and as a public key: its pin would never name the account.
  const old = await createSelfSignedCertificate({ commonName: 'old-printer', keyType: 'rsa', rsaBits: 1024 });
  await assert.rejects(addPin(file, { identity: 'ann@mox.example', certificateOrPin: old.cert }), /a 1024-bit rsa key is too weak to pin/);
  assert.throws(() => pinOf(new X509Certificate(old.cert).publicKey.export({ type: 'spki', format: 'pem' }).toString()), /1024-bit rsa key is too weak/);
  assert.equal(pinOf(old.cert, { refuseWeak: false }).length, 64);

  const config = parseConfig(`
tables: { a: ./a, b: { file: ./b, format: json } }
listeners:
  - { name: one, listen: "127.0.0.1:0", tls: { mode: starttls, cert: c, key: k, clientCertificates: request }, certificateIdentity: { pins: a } }
  - { name: two, listen: "127.0.0.1:0", tls: { mode: starttls, cert: c, key: k, clientCertificates: request }, certificateIdentity: { pins: b } }
`, join(dir, 'postern.yaml'), dir).config;
  assert.throws(() => pinTableOf(config), /different pin tables .*choose one with --listener/);
  assert.equal(pinTableOf(config, 'one').file, join(dir, 'a'));
  assert.throws(() => pinTableOf(config, 'two'), /is json: postern pins writes postfix-format tables/);
}));
