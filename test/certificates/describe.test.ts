// describeCertificate against openssl's own reading of the same certificates: fingerprints, SPKI pin,
// serial, names (RFC 2253 output), validity, SANs, key type; the cache; the failure-reason mapping.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { chainFailureReason, describeCertificate, summarizeCertificate } from '../../engine/certificates/index.ts';
import { openssl, opensslSpkiSha256, x509Facts } from './openssl.ts';

let pki: TestPki;
let dir: string;
/** Certificates openssl made itself, for what our own generator never produces. */
const foreign: Record<string, string> = {};

before(async () => {
  pki = await makeTestPki();
  dir = await mkdtemp(join(tmpdir(), 'postern-describe-'));
  const req = (name: string, args: string[]): void => {
    foreign[name] = join(dir, `${name}.crt`);
    openssl(['req', '-x509', '-nodes', '-keyout', join(dir, `${name}.key`), '-out', foreign[name]!, ...args]);
  };
  // P-384, UTF-8, a multi-valued RDN, an escaped comma, every SAN kind, GeneralizedTime (after 2049).
  req('p384', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-days', '36500', '-utf8', '-multivalue-rdn',
    '-subj', '/C=DE/ST=Berlin/L=Berlin/O=Example, Inc./OU=Mail+UID=ops/CN=Jörg Müller/emailAddress=jorg@example.com',
    '-addext', 'subjectAltName=email:jorg@example.com,DNS:mail.example.com,IP:192.0.2.1,IP:2001:db8::1,URI:https://example.com/u/1']);
  // Ed448, a serial with the high bit set (DER adds a 0x00 sign byte), characters RFC 4514 escapes.
  req('ed448', ['-newkey', 'ed448', '-days', '30', '-set_serial', '0x80ab', '-subj', '/CN=Jörg "the" <admin>; #1 /O=Ltd\\+x', '-utf8']);
  // BMPString values (OpenSSL's "default" string mask), DC and title attributes, RSA 1024.
  const cnf = join(dir, 'bmp.cnf');
  await writeFile(cnf, '[req]\ndistinguished_name=dn\nstring_mask=default\n[dn]\n');
  req('bmp', ['-config', cnf, '-newkey', 'rsa:1024', '-days', '1', '-utf8', '-subj', '/DC=com/DC=example/title=Boss/CN=Жук/O=Jörg']);
  // An RSA-PSS key (SPKI algorithm id-RSASSA-PSS): Node calls it rsa-pss, not rsa.
  req('pss', ['-newkey', 'rsa-pss', '-pkeyopt', 'rsa_keygen_bits:2048', '-days', '1', '-subj', '/CN=pss']);
});
after(() => rm(dir, { recursive: true, force: true }));

async function der(file: string): Promise<Buffer> {
  return new X509Certificate(await readFile(file)).raw;
}

/** Our generator's key types and profiles, plus what openssl made. */
function certificates(): Array<[string, string]> {
  const c = pki.clients;
  return [
    ['alice', c.alice.cert], ['ecdsa', c.ecdsa.cert], ['ed25519', c.ed25519.cert], ['selfsigned', c.selfsigned.cert],
    ['expired', c.expired.cert], ['ca', pki.ca.cert], ['server', pki.server.cert], ...Object.entries(foreign),
  ];
}

test('fingerprints, serial, names, validity and SPKI pin match openssl', async () => {
  await Promise.all(certificates().map(async ([name, file]) => {
    const pc = describeCertificate(await der(file), { verified: true, errorCode: null });
    const [f, pin] = await Promise.all([
      x509Facts(file, '-serial', '-subject', '-issuer', '-nameopt', 'RFC2253,-esc_msb', '-startdate', '-enddate', '-dateopt', 'iso_8601',
        '-fingerprint', '-sha256'),
      opensslSpkiSha256(file),
    ]);
    assert.equal(pc.fingerprint.sha256Colon, f.get('sha256 Fingerprint'), name);
    assert.equal(pc.fingerprint.sha256, f.get('sha256 Fingerprint')!.replace(/:/g, '').toLowerCase(), name);
    assert.equal(pc.serial, f.get('serial')!.toLowerCase(), name);
    assert.equal(pc.subject.dn, f.get('subject'), name);
    assert.equal(pc.issuer.dn, f.get('issuer'), name);
    assert.equal(pc.notBefore, new Date(f.get('notBefore')!.replace(' ', 'T')).toISOString(), name);
    assert.equal(pc.notAfter, new Date(f.get('notAfter')!.replace(' ', 'T')).toISOString(), name);
    assert.equal(pc.pem, new X509Certificate(await readFile(file)).toString(), name);
    // SPKI pin: the openssl pipeline, and Node's re-encoded SPKI in every spelling.
    assert.equal(pc.pin.sha256, pin, name);
    const spki = new X509Certificate(await readFile(file)).publicKey.export({ type: 'spki', format: 'der' });
    const digest = createHash('sha256').update(spki).digest();
    assert.equal(pc.pin.sha256, digest.toString('hex'), name);
    assert.equal(pc.pin.sha256Colon, pin.toUpperCase().match(/../g)!.join(':'), name);
    assert.equal(pc.pin.sha256Base64, digest.toString('base64'), name);
    assert.equal(pc.pin.sha256Base64Url, digest.toString('base64url'), name);
    assert.doesNotMatch(pc.pin.sha256Base64Url, /[=+/]/, name);
  }));
});

test('SHA-1 and MD5 fingerprints match openssl; the test PKI helper computed the same identities', async () => {
  for (const file of [pki.clients.alice.cert, foreign.p384!]) {
    const pc = describeCertificate(await der(file), { verified: true, errorCode: null });
    const [sha1, md5] = await Promise.all(['sha1', 'md5'].map(async (alg) =>
      (await x509Facts(file, '-fingerprint', `-${alg}`)).get(`${alg} Fingerprint`)));
    assert.equal(pc.fingerprint.sha1Colon, sha1);
    assert.equal(pc.fingerprint.md5Colon, md5);
    assert.equal(pc.fingerprint.sha1, sha1!.replace(/:/g, '').toLowerCase());
  }
  const alice = describeCertificate(await der(pki.clients.alice.cert), { verified: true, errorCode: null });
  const h = pki.clients.alice;
  assert.deepEqual(
    [alice.pin.sha256, alice.pin.sha256Colon, alice.pin.sha256Base64, alice.pin.sha256Base64Url],
    [h.pinSha256, h.pinColon, h.pinBase64, h.pinBase64Url]);
  assert.deepEqual([alice.fingerprint.sha256, alice.fingerprint.sha256Colon, alice.fingerprint.sha1, alice.fingerprint.md5],
    [h.fingerprintSha256, h.fingerprintSha256Colon, h.fingerprintSha1, h.fingerprintMd5]);
});

test('key type and size match node:crypto', async () => {
  const expected: Record<string, [string, number]> = {
    alice: ['rsa', 2048], ecdsa: ['ec', 256], ed25519: ['ed25519', 256], selfsigned: ['ed25519', 256],
    p384: ['ec', 384], ed448: ['ed448', 448], bmp: ['rsa', 1024], pss: ['rsa-pss', 2048],
  };
  for (const [name, file] of certificates()) {
    const pc = describeCertificate(await der(file), { verified: true, errorCode: null });
    const key = new X509Certificate(await readFile(file)).publicKey;
    assert.equal(pc.keyType, key.asymmetricKeyType, name);
    const details = key.asymmetricKeyDetails!;
    if (details.modulusLength) assert.equal(pc.keyBits, details.modulusLength, name);
    if (details.namedCurve) assert.equal(pc.keyBits, { prime256v1: 256, secp384r1: 384 }[details.namedCurve], name);
    if (expected[name]) assert.deepEqual([pc.keyType, pc.keyBits], expected[name], name);
  }
});

test('names: attributes in DER order, the named fields, emailAddress, multi-valued RDNs, BMPString', async () => {
  const alice = describeCertificate(await der(pki.clients.alice.cert), { verified: true, errorCode: null });
  assert.deepEqual(alice.subject, {
    dn: 'emailAddress=alice@example.com,CN=alice,O=Example',
    attributes: [['O', 'Example'], ['CN', 'alice'], ['emailAddress', 'alice@example.com']],
    O: 'Example', CN: 'alice', emailAddress: 'alice@example.com',
  });
  assert.deepEqual(alice.issuer.attributes, [['O', 'Postern Test'], ['CN', 'Postern Test CA']]);
  assert.deepEqual(alice.san, { email: ['alice@example.com'], dns: [], ip: [], uri: [] });
  const ed = describeCertificate(await der(pki.clients.ed25519.cert), { verified: true, errorCode: null });
  assert.equal(ed.subject.emailAddress, 'ed@example.com');
  assert.equal(ed.subject.CN, 'ed-device');

  const p384 = describeCertificate(await der(foreign.p384!), { verified: false, errorCode: 'DEPTH_ZERO_SELF_SIGNED_CERT' });
  assert.equal(p384.subject.dn, 'emailAddress=jorg@example.com,CN=Jörg Müller,UID=ops+OU=Mail,O=Example\\, Inc.,L=Berlin,ST=Berlin,C=DE');
  assert.equal(p384.subject.O, 'Example, Inc.');
  assert.equal(p384.subject.OU, 'Mail');
  assert.equal(p384.subject.C, 'DE');
  assert.equal(p384.subject.ST, 'Berlin');
  assert.equal(p384.subject.L, 'Berlin');
  assert.deepEqual(p384.subject.attributes.filter(([k]) => k === 'OU' || k === 'UID'), [['OU', 'Mail'], ['UID', 'ops']]);
  assert.deepEqual(p384.san, {
    email: ['jorg@example.com'], dns: ['mail.example.com'], ip: ['192.0.2.1', '2001:db8::1'], uri: ['https://example.com/u/1'],
  });
  assert.equal(p384.notAfter.slice(0, 2), '21'); // GeneralizedTime

  const ed448 = describeCertificate(await der(foreign.ed448!), { verified: true, errorCode: null });
  assert.equal(ed448.subject.CN, 'Jörg "the" <admin>; #1 ');
  assert.equal(ed448.subject.O, 'Ltd+x');
  assert.equal(ed448.subject.dn, 'O=Ltd\\+x,CN=Jörg \\"the\\" \\<admin\\>\\; #1\\ ');
  assert.equal(ed448.serial, '80ab');

  const bmp = describeCertificate(await der(foreign.bmp!), { verified: true, errorCode: null });
  assert.equal(bmp.subject.CN, 'Жук');
  assert.equal(bmp.subject.O, 'Jörg');
  assert.deepEqual(bmp.subject.attributes.slice(0, 3), [['DC', 'com'], ['DC', 'example'], ['title', 'Boss']]);
});

test('server certificate SANs: DNS and IP', async () => {
  const server = describeCertificate(await der(pki.server.cert), { verified: true, errorCode: null });
  assert.deepEqual(server.san, { email: [], dns: ['localhost'], ip: ['127.0.0.1'], uri: [] });
  assert.equal(server.subject.CN, 'localhost');
});

test('the verdict is merged per call; the parsed part is cached, frozen and shared', async () => {
  const bytes = await der(pki.clients.bob.cert);
  const ok = describeCertificate(bytes, { verified: true, errorCode: null });
  const revoked = describeCertificate(Buffer.from(bytes), { verified: false, errorCode: 'CERT_REVOKED' });
  assert.deepEqual([ok.verified, ok.verifyError, ok.verifyErrorCode], [true, null, null]);
  assert.deepEqual([revoked.verified, revoked.verifyError, revoked.verifyErrorCode], [false, 'revoked', 'CERT_REVOKED']);
  assert.equal(revoked.subject, ok.subject, 'same cached object');
  assert.ok(Object.isFrozen(ok.subject) && Object.isFrozen(ok.san.email) && Object.isFrozen(ok.fingerprint));
  assert.throws(() => { (ok.san.email as string[]).push('x'); });
  // A Uint8Array view works as well as a Buffer.
  const view = new Uint8Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  assert.equal(describeCertificate(view, { verified: true, errorCode: null }).fingerprint.sha256, ok.fingerprint.sha256);
  // Unverified without a code still gets a reason: never verified=false with verifyError=null.
  const unknown = describeCertificate(bytes, { verified: false, errorCode: null });
  assert.deepEqual([unknown.verifyError, unknown.verifyErrorCode], ['invalid', 'UNKNOWN']);
});

test('the cache holds 1,000 entries, least recently used evicted first', async () => {
  const bytes = await der(pki.clients.ecdsa.cert);
  const first = describeCertificate(bytes, { verified: true, errorCode: null }).subject;
  // 1,000 distinct DERs: the same certificate with a different last signature byte (the parse does
  // not check signatures; OpenSSL did in the handshake).
  // XOR with i + 1 (never 0): no variant is the certificate itself, whatever its last bytes are (a plain
  // write of i made one variant equal to it in about 3% of runs, and the test then failed).
  const variant = (i: number): Buffer => {
    const b = Buffer.from(bytes);
    b.writeUInt16BE(b.readUInt16BE(b.length - 2) ^ (i + 1), b.length - 2);
    return b;
  };
  for (let i = 0; i < 999; i++) describeCertificate(variant(i), { verified: true, errorCode: null });
  assert.equal(describeCertificate(bytes, { verified: true, errorCode: null }).subject, first, 'still cached (and now most recent)');
  for (let i = 999; i < 1999; i++) describeCertificate(variant(i), { verified: true, errorCode: null });
  assert.notEqual(describeCertificate(bytes, { verified: true, errorCode: null }).subject, first, 'evicted, parsed anew');
});

test('malformed DER is refused', () => {
  assert.throws(() => describeCertificate(Buffer.from([0x30, 0x82, 0x01]), { verified: true, errorCode: null }), /malformed/);
  assert.throws(() => describeCertificate(Buffer.from('not a certificate'), { verified: true, errorCode: null }), /malformed/);
});

test('chainFailureReason maps Node/OpenSSL codes', () => {
  const table: Array<[string | null, string | null]> = [
    [null, null], ['CERT_HAS_EXPIRED', 'expired'], ['CERT_NOT_YET_VALID', 'not-yet-valid'], ['CERT_REVOKED', 'revoked'],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', 'self-signed'], ['SELF_SIGNED_CERT_IN_CHAIN', 'self-signed'],
    ['UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'unknown-issuer'], ['UNABLE_TO_GET_ISSUER_CERT', 'unknown-issuer'],
    ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'unknown-issuer'], ['CERT_SIGNATURE_FAILURE', 'bad-signature'],
    ['UNABLE_TO_GET_CRL', 'crl-missing'], ['NO_CA_CONFIGURED', 'no-ca-configured'],
    ['CRL_HAS_EXPIRED', 'invalid'], ['INVALID_PURPOSE', 'invalid'], ['SOMETHING_NEW', 'invalid'],
  ];
  for (const [code, reason] of table) assert.equal(chainFailureReason(code), reason, String(code));
});

test('summarizeCertificate keeps what the queue needs', async () => {
  const pc = describeCertificate(await der(pki.clients.revoked.cert), { verified: false, errorCode: 'CERT_REVOKED' });
  assert.deepEqual(summarizeCertificate(pc), {
    subject: 'emailAddress=mallory@example.com,CN=mallory', issuer: 'CN=Postern Test CA,O=Postern Test',
    fingerprintSha256: pki.clients.revoked.fingerprintSha256, pinSha256: pki.clients.revoked.pinSha256,
    verified: false, verifyError: 'revoked',
  });
});
