// The account page's device operations over engine/pki, without a browser: what is pinned when, uploads in
// every form a user may have (PEM or DER, certificate or public key), and what is refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createHash, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../engine/config/load-config.ts';
import { addPin, initCa, listPins, readInventory } from '../../engine/pki/index.ts';
import {
  AccountError, accountDevices, addAccountKey, findDevice, issueAccountDevice, retireAccountDevice, type AccountContext,
} from '../../engine/accounts/account-devices.ts';
import { SightingRecorder } from '../../engine/pki/sightings.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';

let dir = '';
let ctx: AccountContext;
let pinsFile = '';
let pki: TestPki;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-account-devices-'));
  pki = await makeTestPki();
  const ca = await initCa(join(dir, 'ca'));
  pinsFile = join(dir, 'pins');
  await writeFile(pinsFile, '');
  await writeFile(join(dir, 'policy_pins'), '');
  const { config } = parseConfig(`
dataDir: ${JSON.stringify(join(dir, 'data'))}
pki: { dir: ${JSON.stringify(join(dir, 'ca'))} }
tables: { pins: ${JSON.stringify(pinsFile)}, policy_pins: ${JSON.stringify(join(dir, 'policy_pins'))} }
accounts: { listen: "127.0.0.1:0", listener: submission }
policyServices:
  - { name: postfix, listen: "127.0.0.1:10040", certificateIdentity: { pins: policy_pins } }
listeners:
  - name: submission
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: c.pem, key: k.pem, clientCertificates: request, caFiles: [${JSON.stringify(ca.paths.caCert)}] }
    certificateIdentity: { field: emailAddress, pins: pins }
`, join(dir, 'postern.yaml'), dir);
  ctx = { config, listener: config.listeners[0]! };
});
after(() => rm(dir, { recursive: true, force: true }));

const pinOf = (spkiDer: Buffer): string => createHash('sha256').update(spkiDer).digest('hex');

test('an issued certificate is pinned only when the listener\'s field would not name the account', async () => {
  await issueAccountDevice(ctx, 'dave@example.com', 'laptop', 30);
  assert.equal((await listPins(pinsFile)).length, 0, 'emailAddress carries dave@example.com');
  // A user without an address: its certificate has no emailAddress, so its key is pinned to it.
  const carol = await issueAccountDevice(ctx, 'carol', 'laptop', 30);
  const pins = await listPins(pinsFile);
  assert.deepEqual(pins.map((p) => [p.identity, p.device, p.pinSha256]), [['carol', 'laptop', carol.facts.pin.sha256]]);
  const [row] = await accountDevices(ctx, 'carol');
  assert.equal(row!.id, `cert-${carol.record.serial}`);
  assert.equal(row!.kind, 'issued');
  assert.equal(row!.pinned, true);

  // The same key pinned for the Postfix policy service (Postfix checks no CRL).
  await addPin(join(dir, 'policy_pins'), { identity: 'carol', certificateOrPin: carol.facts.pin.sha256 });

  // Revoking it also unpins it, everywhere: a pin would accept the revoked certificate.
  const change = await retireAccountDevice(ctx, row!, 'keyCompromise');
  assert.deepEqual([change.revoked, change.unpinned], [true, true]);
  assert.equal((await listPins(pinsFile)).length, 0);
  assert.equal((await listPins(join(dir, 'policy_pins'))).length, 0);
  const inv = await readInventory(join(dir, 'ca'));
  assert.equal(inv.certificates.find((c) => c.serial === carol.record.serial)!.revoked?.reason, 'keyCompromise');
  await assert.rejects(retireAccountDevice(ctx, (await accountDevices(ctx, 'carol'))[0]!, 'keyCompromise'), /already revoked/);
});

test('uploads: DER certificate, DER and PEM public key; a private key, garbage and a taken name are refused', async () => {
  const der = new X509Certificate(await readFile(pki.clients.ecdsa.cert, 'utf8')).raw;
  const byDer = await addAccountKey(ctx, 'erin@example.com', 'phone', der);
  assert.equal(byDer.pinSha256, pki.clients.ecdsa.pinSha256);

  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  assert.equal((await addAccountKey(ctx, 'erin@example.com', 'tablet', spki)).pinSha256, pinOf(spki));
  const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
  const pem = other.export({ type: 'spki', format: 'pem' }).toString();
  assert.equal((await addAccountKey(ctx, 'erin@example.com', 'watch', pem)).pinSha256, pinOf(other.export({ type: 'spki', format: 'der' })));

  const refused = async (device: string, given: string | Buffer, message: RegExp): Promise<void> => {
    await assert.rejects(addAccountKey(ctx, 'erin@example.com', device, given), (err: Error) => err instanceof AccountError && message.test(err.message));
  };
  await refused('laptop', privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), /That is a private key/);
  await refused('laptop', Buffer.from('not a key at all'), /neither a certificate nor a public key/);
  await refused('laptop', 'zzzz', /Not added: not a certificate .*nor a SHA-256 public-key pin/);
  await refused('phone', pem, /already have a device named "phone"/);
  await refused('laptop', der, /^That key is already registered\.$/);
  await refused('bad name', pki.clients.alice.pinSha256, /Not added: device "bad name"/);
  // Another account's device id is not found from this one.
  const [erinPhone] = await accountDevices(ctx, 'erin@example.com');
  assert.equal(await findDevice(ctx, 'dave@example.com', erinPhone!.id), null);
  assert.equal((await findDevice(ctx, 'ERIN@example.com', erinPhone!.id))?.name, 'phone');
});

test('a pinned key removed on the page leaves every pin table, as a revoked certificate does', async () => {
  // The same device pinned for the account by the administrator for Postfix too (postern pins add --listener postfix).
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const entry = await addAccountKey(ctx, 'hank@example.com', 'laptop', key);
  await addPin(join(dir, 'policy_pins'), { identity: 'hank@example.com', certificateOrPin: key, device: 'laptop' });
  const laptop = (await accountDevices(ctx, 'hank@example.com')).find((d) => d.name === 'laptop')!;
  const change = await retireAccountDevice(ctx, laptop, 'keyCompromise');
  assert.deepEqual([change.revoked, change.unpinned], [false, true]);
  for (const table of [pinsFile, join(dir, 'policy_pins')]) {
    assert.deepEqual((await listPins(table)).filter((p) => p.pinSha256 === entry.pinSha256), [], table);
  }
});

test('a public key too weak to name the account is refused in every form, and a private key whatever comes with it', async () => {
  // The same bar as a certificate's key (pinOf): its pin would never name the account, the device never sign in.
  const refused = async (device: string, given: string | Buffer, message: RegExp): Promise<void> => {
    await assert.rejects(addAccountKey(ctx, 'gina@example.com', device, given), (err: Error) => err instanceof AccountError && message.test(err.message));
  };
  const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
  await refused('laptop', rsa.publicKey.export({ type: 'spki', format: 'pem' }).toString(), /^Not added: a 1024-bit rsa key is too weak to pin/);
  await refused('laptop', rsa.publicKey.export({ type: 'spki', format: 'der' }), /^Not added: a 1024-bit rsa key is too weak to pin/);
  const dsa = generateKeyPairSync('dsa', { modulusLength: 1024, divisorLength: 160 });
  await refused('laptop', dsa.publicKey.export({ type: 'spki', format: 'pem' }).toString(), /^Not added: a 1024-bit dsa key is too weak to pin/);
  // A private key pasted with its public key after it: refused as a private key alone is.
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const both = `${ec.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()}${ec.publicKey.export({ type: 'spki', format: 'pem' }).toString()}`;
  await refused('laptop', both, /That is a private key/);
  await refused('laptop', Buffer.from(both), /That is a private key/);
  assert.deepEqual((await listPins(pinsFile)).filter((p) => p.identity === 'gina@example.com'), []);
  // A strong one still goes in.
  assert.equal((await addAccountKey(ctx, 'gina@example.com', 'laptop', ec.publicKey.export({ type: 'spki', format: 'pem' }).toString())).identity, 'gina@example.com');
});

test('a key another account pinned in another pin table (a policy service\'s) is refused; its own account may pin it here too', async () => {
  // Bob's device sends through Postfix (the policy service's pins); pinned to mallory in the listener's table, the
  // same device connecting to the listener would sign in as mallory.
  const bob = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
  const pem = bob.export({ type: 'spki', format: 'pem' }).toString();
  await addPin(join(dir, 'policy_pins'), { identity: 'bob@example.com', certificateOrPin: pem, device: 'phone' });
  const spki = bob.export({ type: 'spki', format: 'der' });
  for (const given of [pem, spki, pinOf(spki), Buffer.from(pinOf(spki), 'hex').toString('base64url')]) {
    await assert.rejects(addAccountKey(ctx, 'mallory@example.com', 'phone', given), (err: Error) => err instanceof AccountError && err.message === 'That key is already registered.');
  }
  assert.deepEqual((await listPins(pinsFile)).filter((p) => p.pinSha256 === pinOf(spki)), []);
  assert.equal((await addAccountKey(ctx, 'BOB@example.com', 'phone', pem)).identity, 'bob@example.com');
});

test('the key of a certificate the server saw name another account (a CA of caFiles not pki.dir\'s) is refused; its own account may pin it', async () => {
  // alice's certificate of another CA the listener trusts, seen on the listener (the recorder the server writes with):
  // pinned to mallory, her device would sign in as mallory once that certificate expires.
  const alice = new X509Certificate(await readFile(pki.clients.alice.cert, 'utf8'));
  const recorder = new SightingRecorder(ctx.config.dataDir, 'single', { delayMs: 1 });
  recorder.seen({
    fingerprintSha256: createHash('sha256').update(alice.raw).digest('hex'), pinSha256: pki.clients.alice.pinSha256, serial: alice.serialNumber,
    subject: alice.subject, issuer: alice.issuer, notAfter: new Date(alice.validTo).toISOString(), listener: 'submission',
    identity: 'alice@example.com', verdict: 'verified', lastConnection: 'c1',
  });
  await recorder.close();
  for (const given of [alice.toString(), alice.raw, pki.clients.alice.pinSha256]) {
    await assert.rejects(addAccountKey(ctx, 'mallory@example.com', 'laptop', given), (err: Error) => err instanceof AccountError && err.message === 'That key is already registered.');
  }
  assert.equal((await addAccountKey(ctx, 'alice@example.com', 'laptop', alice.raw)).identity, 'alice@example.com');
});

test('the key of a certificate the CA issued to another account is refused, in every form; its own account may pin it', async () => {
  // Field mode: frank's certificate is not pinned, and certificates are public (signed mail carries them).
  const frank = await issueAccountDevice(ctx, 'frank@example.com', 'desk', 30);
  assert.equal((await listPins(pinsFile)).some((p) => p.pinSha256 === frank.facts.pin.sha256), false);
  const publicPem = new X509Certificate(frank.certPem).publicKey.export({ type: 'spki', format: 'pem' }).toString();
  for (const given of [frank.certPem, Buffer.from(new X509Certificate(frank.certPem).raw), publicPem, frank.facts.pin.sha256]) {
    // Pinned to grace, it would name grace once frank's certificate expires: frank's device signing in as grace.
    await assert.rejects(addAccountKey(ctx, 'grace@example.com', 'borrowed', given),
      (err: Error) => err instanceof AccountError && err.message === 'That key is already registered.');
  }
  assert.equal((await listPins(pinsFile)).some((p) => p.pinSha256 === frank.facts.pin.sha256), false, 'nothing pinned');
  assert.equal((await addAccountKey(ctx, 'Frank@example.com', 'desk-pin', frank.certPem)).identity, 'frank@example.com');
});
