// normalizeFingerprint / normalizePin / matchesPin with fixed, independently known digests (FIPS 180-2's
// SHA-256("abc"), the example of docs/client-certificates.md) and pins computed by the openssl CLI.
// (pins.test.ts derives its spellings from the test PKI; this file pins exact literals.)
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { describeCertificate, matchesPin, normalizeFingerprint, normalizePin } from '../../engine/certificates/index.ts';
import { opensslSpkiSha256 } from './openssl.ts';

let pki: TestPki;
before(async () => { pki = await makeTestPki(); });

// SHA-256("abc"): its base64 contains both `+` and `/`, so the two alphabets differ in two places.
const ABC_HEX = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';
const ABC_COLON = 'BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD';
const ABC_BASE64 = 'ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=';
const ABC_BASE64URL = 'ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0';

test('SHA-256 in every accepted spelling → the same lowercase hex, length 32', () => {
  const spellings = [
    ABC_HEX, ABC_HEX.toUpperCase(), // plain hex, either case
    ABC_COLON, ABC_COLON.toLowerCase(), // colon hex, either case (Postfix)
    ABC_BASE64, ABC_BASE64.slice(0, -1), // base64 with and without padding
    ABC_BASE64URL, // base64url (mox)
    `sha256//${ABC_BASE64}`, `SHA256//${ABC_BASE64URL}`, // curl --pinnedpubkey
    ` ${ABC_COLON}\t`, `${ABC_BASE64URL}\n`, // surrounding whitespace
  ];
  for (const s of spellings) {
    assert.deepEqual(normalizeFingerprint(s), { hex: ABC_HEX, length: 32 }, s);
    assert.equal(normalizePin(s), ABC_HEX, s);
  }
});

test('the pin example of docs/client-certificates.md is one digest in all its spellings', () => {
  const hex = 'c53063e5ab1d60cbaa114c9b17429c47efdfd71443dbae2cf4f285e8cfa3a8db';
  for (const s of [
    hex, hex.toUpperCase(), hex.toUpperCase().match(/../g)!.join(':'),
    'xTBj5asdYMuqEUybF0KcR+/f1xRD264s9PKF6M+jqNs=', 'xTBj5asdYMuqEUybF0KcR+/f1xRD264s9PKF6M+jqNs',
    'xTBj5asdYMuqEUybF0KcR-_f1xRD264s9PKF6M-jqNs', 'sha256//xTBj5asdYMuqEUybF0KcR+/f1xRD264s9PKF6M+jqNs=',
  ]) assert.equal(normalizePin(s), hex, s);
});

test('SHA-1, MD5 and SHA-384 fingerprints keep their length; they are not SHA-256 pins', () => {
  const sha1 = 'a9993e364706816aba3e25717850c26c9cd0d89d'; // SHA-1("abc")
  const md5 = '900150983cd24fb0d6963f7d28e17f72'; // MD5("abc")
  const sha384 = 'cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7';
  const colon = (h: string): string => h.toUpperCase().match(/../g)!.join(':');
  assert.deepEqual(normalizeFingerprint(colon(sha1)), { hex: sha1, length: 20 });
  assert.deepEqual(normalizeFingerprint(sha1.toUpperCase()), { hex: sha1, length: 20 });
  assert.deepEqual(normalizeFingerprint(colon(md5).toLowerCase()), { hex: md5, length: 16 });
  assert.deepEqual(normalizeFingerprint(sha384), { hex: sha384, length: 48 });
  for (const s of [sha1, colon(md5), sha384, Buffer.from(sha1, 'hex').toString('base64')]) assert.equal(normalizePin(s), null, s);
});

test('junk is null, never a guess', () => {
  const junk = [
    '', ' ', 'sha256//', 'none', 'alice@example.com', `0x${ABC_HEX}`,
    ABC_HEX.slice(0, -1), // odd number of digits
    `${ABC_HEX}00`, // 33 bytes: no such digest
    ABC_HEX.replace('b', 'g'), // not hex
    `${ABC_COLON}:`, `:${ABC_COLON}`, ABC_COLON.replace('BA:78', 'BA78'), ABC_COLON.replace('BA:', 'B:A'), // broken colon groups
    ABC_COLON.replaceAll(':', '-'), ABC_COLON.replaceAll(':', ' '), // other separators
    ABC_BASE64.slice(1), ABC_BASE64URL.slice(1), `A${ABC_BASE64URL}`, // 42 / 44 characters
    `${ABC_BASE64URL}==`, `${ABC_BASE64}=`, // too much padding
    ABC_BASE64.replace('/', '_'), // mixed alphabets: + with _
    ABC_BASE64URL.replace('-', '+'), ABC_BASE64URL.replace('_', '/'), // mixed alphabets, unpadded
    ABC_BASE64.replace('ungW', 'un W'), // whitespace inside
    `${ABC_BASE64URL.slice(0, 42)}B`, // last character with bits a 32-byte digest does not have
    'é'.repeat(43),
  ];
  for (const s of junk) {
    assert.equal(normalizeFingerprint(s), null, JSON.stringify(s));
    assert.equal(normalizePin(s), null, JSON.stringify(s));
  }
});

test('matchesPin: a certificate against its pin computed by openssl, in every spelling; others never match', async () => {
  for (const name of ['alice', 'ecdsa', 'ed25519', 'selfsigned'] as const) {
    const file = pki.clients[name].cert;
    const pc = describeCertificate(new X509Certificate(await readFile(file)).raw, { verified: false, errorCode: 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY' });
    const hex = await opensslSpkiSha256(file);
    const digest = Buffer.from(hex, 'hex');
    const spellings = [
      hex, hex.toUpperCase(), hex.toUpperCase().match(/../g)!.join(':'), digest.toString('base64'),
      digest.toString('base64').replace(/=$/, ''), digest.toString('base64url'), `sha256//${digest.toString('base64')}`,
    ];
    for (const s of spellings) assert.equal(matchesPin(pc, s), true, `${name}: ${s}`);
    assert.equal(matchesPin(pc, pc.fingerprint.sha256), false, `${name}: a certificate fingerprint is not a key pin`);
    assert.equal(matchesPin(pc, ABC_HEX), false, name);
    assert.equal(matchesPin(pc, 'junk'), false, name);
    assert.equal(matchesPin(pc, ''), false, name);
    for (const other of ['alice', 'ecdsa', 'ed25519', 'selfsigned'] as const) {
      if (other !== name) assert.equal(matchesPin(pc, pki.clients[other].pinBase64Url), false, `${name} vs ${other}`);
    }
  }
});

test('a pin table naming one key twice, in two spellings, is refused (the later line silently won: another account)', async () => {
  const { mkdtemp, writeFile, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { loadTable } = await import('../../engine/policy/lookup-tables.ts');
  const dir = await mkdtemp(join(tmpdir(), 'postern-pin-dup-'));
  try {
    for (const second of [ABC_COLON, ABC_BASE64URL, ABC_BASE64, `sha256//${ABC_BASE64}`]) {
      const file = join(dir, 'devices');
      await writeFile(file, `${ABC_HEX} alice@example.com\n${second} mallory@example.com\n`);
      await assert.rejects(loadTable('devices', file), /devices:2: duplicate key /, second);
      // The other order too.
      await writeFile(file, `${second} mallory@example.com\n${ABC_HEX} alice@example.com\n`);
      await assert.rejects(loadTable('devices', file), /devices:2: duplicate key /, second);
    }
    // A YAML or JSON table too: the later key silently won there.
    for (const second of [ABC_COLON, ABC_BASE64URL, ABC_HEX.toUpperCase()]) {
      const file = join(dir, 'devices.yaml');
      await writeFile(file, `# pins\n${ABC_HEX}: alice@example.com\n'${second}': mallory@example.com\n`);
      await assert.rejects(loadTable('devices', { file, format: 'yaml', caseSensitive: false }), /devices\.yaml:3: duplicate key /, second);
      const json = join(dir, 'devices.json');
      await writeFile(json, `{\n  "${ABC_HEX}": "alice@example.com",\n  "${second}": "mallory@example.com"\n}\n`);
      await assert.rejects(loadTable('devices', { file: json, format: 'json', caseSensitive: false }), /devices\.json:3: duplicate key /, second);
    }
    // Two different keys are two entries (the check can pass).
    await writeFile(join(dir, 'ok'), `${ABC_HEX} alice@example.com\n${'00'.repeat(32)} bob@example.com\n`);
    const table = await loadTable('ok', join(dir, 'ok'));
    assert.equal(table.get(ABC_BASE64URL), 'alice@example.com');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
