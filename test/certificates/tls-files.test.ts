// Loading TLS files: what is accepted, what tls.createSecureContext gets, and errors that start with the file's path.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import tls from 'node:tls';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { createCrl, loadKeyPair, loadTrustMaterial } from '../../engine/certificates/index.ts';

let pki: TestPki;
const scratch = useScratchDir('postern-tls-files-');
const file = scratch.file;

before(async () => {
  pki = await makeTestPki();
});

/** Asserts that `promise` rejects with a message that starts with `path: ` and matches `rest`. */
async function rejectsNaming(promise: Promise<unknown>, path: string, rest: RegExp): Promise<void> {
  await assert.rejects(promise, (err: Error) => {
    assert.ok(err.message.startsWith(`${path}: `), err.message);
    assert.match(err.message.slice(path.length + 2), rest);
    return true;
  });
}

test('CA bundles and PEM/DER CRLs load, and tls.createSecureContext accepts them', async () => {
  const crlPem = await readFile(pki.crl, 'utf8');
  const crlDer = Buffer.from(crlPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const bundle = await file('bundle.pem', `# our CAs\n${await readFile(pki.ca.cert, 'utf8')}\n${await readFile(pki.otherCa.cert, 'utf8')}`);
  const trust = await loadTrustMaterial({
    caFiles: [bundle], crlFiles: [pki.crl, await file('ca.crl.der', crlDer), pki.otherCa.crl],
  });
  assert.equal(trust.ca.length, 2);
  assert.equal(trust.crl.length, 3);
  assert.deepEqual(trust.warnings, []);
  assert.ok(trust.crl.every((p) => p.startsWith('-----BEGIN X509 CRL-----\n')));
  assert.equal(trust.crl[1], trust.crl[0], 'the DER CRL became the same PEM');
  assert.doesNotThrow(() => tls.createSecureContext({ ca: trust.ca, crl: trust.crl }));
});

test('CA file errors name the file', async () => {
  const missing = join(scratch.path, 'nope.pem');
  await rejectsNaming(loadTrustMaterial({ caFiles: [missing], crlFiles: [] }), missing, /^cannot read: ENOENT/);
  const garbage = await file('garbage.pem', 'hello\n');
  await rejectsNaming(loadTrustMaterial({ caFiles: [garbage], crlFiles: [] }), garbage, /^not a PEM certificate$/);
  const keyOnly = await file('key-only.pem', await readFile(pki.ca.key, 'utf8'));
  await rejectsNaming(loadTrustMaterial({ caFiles: [keyOnly], crlFiles: [] }), keyOnly, /^not a PEM certificate$/);
  const broken = await file('broken.pem', '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
  await rejectsNaming(loadTrustMaterial({ caFiles: [broken], crlFiles: [] }), broken, /^unreadable certificate/);
});

test('CRL errors name the file: unreadable, or not signed by a configured CA', async () => {
  const garbage = await file('garbage.crl', Buffer.from([1, 2, 3, 4]));
  await rejectsNaming(loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [garbage] }), garbage, /^not a CRL/);
  const certNotCrl = pki.ca.cert;
  await rejectsNaming(loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [certNotCrl] }), certNotCrl, /^not a PEM CRL$/);
  // The other CA's CRL with only our CA configured.
  await rejectsNaming(loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [pki.otherCa.crl] }), pki.otherCa.crl,
    /^CRL issued by "CN=Other CA" is not signed by any configured CA$/);
  // Same issuer name, different key: a forged CRL.
  const { ca } = pki.authorities;
  const impostor = { ...ca, keys: pki.authorities.otherCa.keys, keyType: pki.authorities.otherCa.keyType };
  const forged = await file('forged.crl', await createCrl(impostor, []));
  await rejectsNaming(loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [forged] }), forged, /not signed by any configured CA/);
});

test('an expired CRL loads with a warning that names the file', async () => {
  const expired = await file('expired.crl', await createCrl(pki.authorities.ca, [], {
    thisUpdate: new Date('2020-01-01T00:00:00Z'), nextUpdate: new Date('2020-02-01T00:00:00Z'),
  }));
  const trust = await loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [expired] });
  assert.equal(trust.crl.length, 1);
  assert.equal(trust.warnings.length, 1);
  assert.match(trust.warnings[0]!, new RegExp(`^${expired}: CRL expired on 2020-02-01T00:00:00.000Z`));
});

test('a CRL issued after this server\'s clock (a node behind the CA\'s clock) loads with a warning that names the file', async () => {
  const issued = new Date(Date.now() + 600_000);
  const future = await file('future.crl', await createCrl(pki.authorities.ca, [], { thisUpdate: issued, nextUpdate: new Date(issued.getTime() + 86400_000) }));
  const trust = await loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [future] });
  assert.equal(trust.crl.length, 1);
  assert.equal(trust.warnings.length, 1);
  assert.match(trust.warnings[0]!, new RegExp(`^${future}: CRL issued on ${issued.toISOString().replace(/\d{3}Z$/, '000Z')}, after this server's clock .* fails with CRL_NOT_YET_VALID until then$`));
});

test('a non-CA certificate in a CA file is a warning', async () => {
  const trust = await loadTrustMaterial({ caFiles: [pki.clients.alice.cert], crlFiles: [] });
  assert.equal(trust.ca.length, 1);
  assert.match(trust.warnings[0]!, new RegExp(`^${pki.clients.alice.cert}: ".*CN=alice.*" is not a CA certificate`));
});

test('loadKeyPair: a matching pair loads; only certificates come back as `cert`', async () => {
  const pair = await loadKeyPair(pki.server.cert, pki.server.key);
  assert.equal(pair.cert.match(/BEGIN CERTIFICATE/g)!.length, 2, 'leaf and CA');
  assert.equal(pair.key, await readFile(pki.server.key, 'utf8'));
  // A combined key+cert file (alice.pem) as the certificate file.
  const combined = await loadKeyPair(pki.clients.alice.pem, pki.clients.alice.key);
  assert.doesNotMatch(combined.cert, /PRIVATE KEY/);
  assert.doesNotThrow(() => tls.createSecureContext(combined));
});

test('loadKeyPair errors name the file', async () => {
  await rejectsNaming(loadKeyPair(pki.server.cert, pki.clients.alice.key), pki.clients.alice.key,
    /^private key does not match certificate /);
  const notKey = await file('not-a-key.pem', 'nothing\n');
  await rejectsNaming(loadKeyPair(pki.server.cert, notKey), notKey, /^not a usable private key/);
  const notCert = await file('not-a-cert.pem', await readFile(pki.server.key, 'utf8'));
  await rejectsNaming(loadKeyPair(notCert, pki.server.key), notCert, /^holds a private key, not a certificate \(are the certificate and key files swapped\?\)$/);
  const missing = join(scratch.path, 'missing.key');
  await rejectsNaming(loadKeyPair(pki.server.cert, missing), missing, /^cannot read: ENOENT/);
});
