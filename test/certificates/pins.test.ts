// Pins and fingerprints in every spelling administrators use: Postfix colon hex, plain hex, base64, base64url (mox).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { X509Certificate } from 'node:crypto';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { describeCertificate, matchesPin, normalizeFingerprint, normalizePin } from '../../engine/certificates/index.ts';

let pki: TestPki;
before(async () => { pki = await makeTestPki(); });

test('every spelling of a SHA-256 SPKI pin normalises to the same lowercase hex', () => {
  for (const c of Object.values(pki.clients)) {
    const spellings = [
      c.pinSha256, c.pinSha256.toUpperCase(), c.pinColon, c.pinColon.toLowerCase(),
      c.pinBase64, c.pinBase64.replace(/=$/, ''), c.pinBase64Url, `  ${c.pinBase64Url}\n`, `sha256//${c.pinBase64}`,
    ];
    for (const s of spellings) assert.equal(normalizePin(s), c.pinSha256, s);
  }
});

test('what is not a SHA-256 digest is refused', () => {
  const pin = pki.clients.alice.pinBase64Url;
  const bad = [
    '', 'alice@example.com', 'zz'.repeat(32), 'ab'.repeat(31), 'ab'.repeat(33), 'abc',
    pki.clients.alice.fingerprintSha1, pki.clients.alice.fingerprintMd5, // right form, wrong length for a pin
    pki.clients.alice.pinColon.replace(/:/g, '-'), pki.clients.alice.pinColon.slice(1), // broken colon hex
    pin.slice(1), pin + 'A', pin + '==',
    pin.slice(0, 42) + 'B', // last character carries bits a 32-byte digest does not have
    '+' + pin.slice(1, 10) + '_' + pin.slice(11), // mixed base64 alphabets
  ];
  for (const s of bad) assert.equal(normalizePin(s), null, s);
});

test('normalizeFingerprint keeps the digest length, so SHA-1 and MD5 fingerprints compare against the right digest', () => {
  const a = pki.clients.alice;
  assert.deepEqual(normalizeFingerprint(a.fingerprintSha256Colon), { hex: a.fingerprintSha256, length: 32 });
  assert.deepEqual(normalizeFingerprint(a.fingerprintSha1Colon), { hex: a.fingerprintSha1, length: 20 });
  assert.deepEqual(normalizeFingerprint(a.fingerprintSha1.toUpperCase()), { hex: a.fingerprintSha1, length: 20 });
  const md5Colon = a.fingerprintMd5.toUpperCase().match(/../g)!.join(':');
  assert.deepEqual(normalizeFingerprint(md5Colon), { hex: a.fingerprintMd5, length: 16 });
  assert.deepEqual(normalizeFingerprint(a.pinBase64), { hex: a.pinSha256, length: 32 });
  assert.equal(normalizeFingerprint('ab'.repeat(48))?.length, 48); // sha384
  assert.equal(normalizeFingerprint('ab'.repeat(17)), null); // no such digest
  assert.equal(normalizeFingerprint('hello'), null);
});

test('matchesPin compares a described certificate with a pin in any spelling', async () => {
  const der = new X509Certificate(await readFile(pki.clients.ed25519.cert)).raw;
  const pc = describeCertificate(der, { verified: false, errorCode: 'UNABLE_TO_GET_CRL' });
  const own = pki.clients.ed25519;
  for (const p of [own.pinSha256, own.pinColon, own.pinBase64, own.pinBase64Url]) assert.equal(matchesPin(pc, p), true, p);
  assert.equal(matchesPin(pc, pki.clients.alice.pinBase64Url), false);
  assert.equal(matchesPin(pc, own.fingerprintSha256), false, 'a certificate fingerprint is not a key pin');
  assert.equal(matchesPin(pc, 'garbage'), false);
});
