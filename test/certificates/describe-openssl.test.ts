// describeCertificate() field by field against the openssl CLI for the test PKI's alice (RSA), ecdsa,
// ed25519 and selfsigned certificates; the verdict fields for every chain failure code; and that the
// cached parse is never shared mutable state. (describe.test.ts covers names, openssl-made certificates
// and the cache size; this file is the per-certificate openssl oracle.)
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { makeTestPki, type TestPki, type ClientName } from '../helpers/pki.ts';
import { chainFailureReason, describeCertificate } from '../../engine/certificates/index.ts';
import type { PeerCertificate } from '../../engine/sandbox/api/index.ts';
import { opensslAsync } from './openssl.ts';

let pki: TestPki;
before(async () => { pki = await makeTestPki(); });

const NAMES = ['alice', 'ecdsa', 'ed25519', 'selfsigned'] as const satisfies readonly ClientName[];
const VERIFIED = { verified: true, errorCode: null } as const;

async function describeFile(file: string): Promise<PeerCertificate> {
  return describeCertificate(new X509Certificate(await readFile(file)).raw, VERIFIED);
}

const x509 = async (file: string, ...args: string[]): Promise<string> =>
  (await opensslAsync(['x509', '-in', file, '-noout', ...args])).toString('utf8');

/** `<alg> Fingerprint=AB:CD:…` → `AB:CD:…` */
async function fingerprint(file: string, alg: 'sha256' | 'sha1' | 'md5'): Promise<string> {
  const out = await x509(file, '-fingerprint', `-${alg}`);
  const m = new RegExp(`^${alg} Fingerprint=((?:[0-9A-F]{2}:)+[0-9A-F]{2})\\n$`).exec(out);
  assert.ok(m, out);
  return m[1]!;
}

/** The SPKI SHA-256 as the documentation computes it: x509 -pubkey | pkey -pubin -outform DER | dgst -sha256. */
async function spkiDigest(file: string, digest = 'sha256'): Promise<Buffer> {
  const pub = await opensslAsync(['x509', '-in', file, '-pubkey', '-noout']);
  const der = await opensslAsync(['pkey', '-pubin', '-outform', 'DER'], pub);
  return opensslAsync(['dgst', `-${digest}`, '-binary'], der);
}

/** `subject=` / `issuer=` with `-nameopt sep_multiline,sname`: one `    type=value` line per attribute, DER order. */
async function nameAttributes(file: string, which: 'subject' | 'issuer'): Promise<Array<[string, string]>> {
  const out = await x509(file, `-${which}`, '-nameopt', 'sep_multiline,sname,utf8,-esc_msb');
  const lines = out.split('\n').filter(Boolean);
  assert.equal(lines[0], `${which}=`);
  return lines.slice(1).map((l) => {
    const m = /^ {4}([A-Za-z0-9.]+)=(.*)$/.exec(l);
    assert.ok(m, l);
    return [m[1]!, m[2]!];
  });
}

test('SHA-256, SHA-1 and MD5 certificate fingerprints equal `openssl x509 -fingerprint` (colon form)', async () => {
  for (const name of NAMES) {
    const file = pki.clients[name].cert;
    const pc = await describeFile(file);
    const [sha256, sha1, md5] = await Promise.all([fingerprint(file, 'sha256'), fingerprint(file, 'sha1'), fingerprint(file, 'md5')]);
    assert.equal(pc.fingerprint.sha256Colon, sha256, name);
    assert.equal(pc.fingerprint.sha1Colon, sha1, name);
    assert.equal(pc.fingerprint.md5Colon, md5, name);
    assert.equal(pc.fingerprint.sha256, sha256.replaceAll(':', '').toLowerCase(), name);
    assert.equal(pc.fingerprint.sha1, sha1.replaceAll(':', '').toLowerCase(), name);
    assert.equal(pc.fingerprint.md5, md5.replaceAll(':', '').toLowerCase(), name);
    assert.deepEqual([sha256.length, sha1.length, md5.length], [95, 59, 47], name);
  }
});

test('the SPKI pin equals the openssl pipeline: hex, colon hex, base64 and base64url (mox form, no padding)', async () => {
  for (const name of NAMES) {
    const file = pki.clients[name].cert;
    const pc = await describeFile(file);
    const digest = await spkiDigest(file);
    assert.equal(digest.length, 32);
    assert.equal(pc.pin.sha256, digest.toString('hex'), name);
    assert.equal(pc.pin.sha256Colon, digest.toString('hex').toUpperCase().match(/../g)!.join(':'), name);
    assert.equal(pc.pin.sha256Base64, digest.toString('base64'), name);
    // What `… | basenc --base64url | tr -d =` prints (docs/client-certificates.md).
    const b64url = digest.toString('base64').replaceAll('+', '-').replaceAll('/', '_').replace(/=+$/, '');
    assert.equal(pc.pin.sha256Base64Url, b64url, name);
    assert.equal(pc.pin.sha256Base64Url.length, 43, name);
    // A pin is about the key, not the certificate.
    assert.notEqual(pc.pin.sha256, pc.fingerprint.sha256, name);
    // Postfix's pkey_fingerprint under smtpd_tls_fingerprint_digest = sha1 / md5.
    for (const d of ['sha1', 'md5'] as const) {
      const other = (await spkiDigest(file, d)).toString('hex');
      assert.equal(pc.pin[d], other, `${name} ${d}`);
      assert.equal(pc.pin[`${d}Colon`], other.toUpperCase().match(/../g)!.join(':'), `${name} ${d}`);
    }
  }
});

test('subject and issuer attributes equal openssl (DER order), and CN / O / emailAddress are picked from them', async () => {
  const expected: Record<(typeof NAMES)[number], { CN: string; O?: string; emailAddress?: string; issuerCN: string }> = {
    alice: { CN: 'alice', O: 'Example', emailAddress: 'alice@example.com', issuerCN: 'Postern Test CA' },
    ecdsa: { CN: 'ec-device', emailAddress: 'ec@example.com', issuerCN: 'Postern Test CA' },
    ed25519: { CN: 'ed-device', emailAddress: 'ed@example.com', issuerCN: 'Postern Test CA' },
    selfsigned: { CN: 'eve', issuerCN: 'eve' },
  };
  for (const name of NAMES) {
    const file = pki.clients[name].cert;
    const pc = await describeFile(file);
    assert.deepEqual(pc.subject.attributes, await nameAttributes(file, 'subject'), name);
    assert.deepEqual(pc.issuer.attributes, await nameAttributes(file, 'issuer'), name);
    const e = expected[name];
    assert.deepEqual([pc.subject.CN, pc.subject.O, pc.subject.emailAddress], [e.CN, e.O, e.emailAddress], name);
    assert.equal(pc.issuer.CN, e.issuerCN, name);
    assert.equal(pc.issuer.O, name === 'selfsigned' ? undefined : 'Postern Test', name);
    assert.equal(pc.subject.OU, undefined, name);
  }
});

test('SAN e-mail addresses equal `openssl x509 -ext subjectAltName`', async () => {
  for (const name of NAMES) {
    const file = pki.clients[name].cert;
    const pc = await describeFile(file);
    const out = await x509(file, '-ext', 'subjectAltName');
    const emails = [...out.matchAll(/email:([^,\s]+)/g)].map((m) => m[1]!);
    assert.deepEqual(pc.san.email, emails, name);
    assert.deepEqual(pc.san, { email: name === 'alice' ? ['alice@example.com'] : [], dns: [], ip: [], uri: [] }, name);
  }
});

test('serial, notBefore and notAfter equal openssl; the serial is the one the generator reported', async () => {
  for (const name of NAMES) {
    const file = pki.clients[name].cert;
    const pc = await describeFile(file);
    const out = await x509(file, '-serial', '-startdate', '-enddate', '-dateopt', 'iso_8601');
    const m = /^serial=([0-9A-F]+)\nnotBefore=(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)Z\nnotAfter=(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)Z\n$/.exec(out);
    assert.ok(m, out);
    assert.equal(pc.serial, m[1]!.toLowerCase(), name);
    assert.equal(pc.serial, pki.clients[name].serial, name);
    assert.equal(pc.notBefore, `${m[2]}T${m[3]}.000Z`, name);
    assert.equal(pc.notAfter, `${m[4]}T${m[5]}.000Z`, name);
    // The generator's defaults: valid from an hour ago, for two years (730 days).
    assert.equal(Date.parse(pc.notAfter) - Date.parse(pc.notBefore), 730 * 86400_000, name);
  }
});

test('keyType and keyBits agree with `openssl x509 -text`', async () => {
  const expected: Record<(typeof NAMES)[number], [string, number, string]> = {
    alice: ['rsa', 2048, 'rsaEncryption'], ecdsa: ['ec', 256, 'id-ecPublicKey'],
    ed25519: ['ed25519', 256, 'ED25519'], selfsigned: ['ed25519', 256, 'ED25519'],
  };
  for (const name of NAMES) {
    const file = pki.clients[name].cert;
    const pc = await describeFile(file);
    const text = await x509(file, '-text');
    const [type, bits, algorithm] = expected[name];
    assert.equal(/Public Key Algorithm: (\S+)/.exec(text)![1], algorithm, name);
    // openssl prints a size for RSA and EC keys; an Ed25519 key is 32 bytes (256 bits) by definition.
    const printed = /Public-Key: \((\d+) bit\)/.exec(text)?.[1];
    if (type === 'ed25519') assert.equal(printed, undefined, name);
    else assert.equal(Number(printed), bits, name);
    assert.deepEqual([pc.keyType, pc.keyBits], [type, bits], name);
  }
});

test('the verdict fields for every OpenSSL code: verified false, verifyError = chainFailureReason, verifyErrorCode = the code', async () => {
  const der = new X509Certificate(await readFile(pki.clients.alice.cert)).raw;
  const table: Array<[string, string]> = [
    ['CERT_HAS_EXPIRED', 'expired'], ['CERT_NOT_YET_VALID', 'not-yet-valid'], ['CERT_REVOKED', 'revoked'],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', 'self-signed'], ['SELF_SIGNED_CERT_IN_CHAIN', 'self-signed'],
    ['UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'unknown-issuer'], ['UNABLE_TO_GET_ISSUER_CERT', 'unknown-issuer'],
    ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'unknown-issuer'], ['CERT_SIGNATURE_FAILURE', 'bad-signature'],
    ['UNABLE_TO_GET_CRL', 'crl-missing'], ['NO_CA_CONFIGURED', 'no-ca-configured'],
    // Everything else OpenSSL can say is "invalid", never null.
    ['CRL_HAS_EXPIRED', 'invalid'], ['CRL_NOT_YET_VALID', 'invalid'], ['INVALID_CA', 'invalid'], ['INVALID_PURPOSE', 'invalid'],
    ['CERT_CHAIN_TOO_LONG', 'invalid'], ['HOSTNAME_MISMATCH', 'invalid'], ['UNKNOWN', 'invalid'],
  ];
  for (const [code, reason] of table) {
    assert.equal(chainFailureReason(code), reason, code);
    const pc = describeCertificate(der, { verified: false, errorCode: code });
    assert.deepEqual([pc.verified, pc.verifyError, pc.verifyErrorCode], [false, reason, code], code);
    assert.equal(pc.subject.CN, 'alice', 'the parsed part does not depend on the verdict');
  }
  assert.equal(chainFailureReason(null), null);
  // Verified: no error fields, whatever code was passed along.
  const ok = describeCertificate(der, { verified: true, errorCode: 'CERT_HAS_EXPIRED' });
  assert.deepEqual([ok.verified, ok.verifyError, ok.verifyErrorCode], [true, null, null]);
  // Unverified without a code: still a reason.
  const unknown = describeCertificate(der, { verified: false, errorCode: null });
  assert.deepEqual([unknown.verified, unknown.verifyError, unknown.verifyErrorCode], [false, 'invalid', 'UNKNOWN']);
});

test('cached results are equal, and mutating one result changes neither the cache nor the next result', async () => {
  const der = new X509Certificate(await readFile(pki.clients.alice.cert)).raw;
  const first = describeCertificate(der, VERIFIED);
  const snapshot = structuredClone(first);
  const second = describeCertificate(Buffer.from(der), VERIFIED);
  assert.deepEqual(second, first);
  assert.notEqual(second, first, 'a new top-level object per call');

  // The top level belongs to the caller: reassigning its fields is allowed and stays local.
  const mutable = first as { -readonly [K in keyof PeerCertificate]: PeerCertificate[K] };
  mutable.verified = false;
  mutable.verifyError = 'revoked';
  mutable.serial = '00';
  mutable.subject = { dn: 'CN=mallory', attributes: [['CN', 'mallory']], CN: 'mallory' };
  // The shared, cached parts are frozen: writes throw (strict mode) instead of leaking into later calls.
  const nested = second as unknown as {
    subject: { CN: string; attributes: string[][] }; fingerprint: { sha256: string }; san: { email: string[] }; pin: Record<string, string>;
  };
  assert.throws(() => { nested.subject.CN = 'mallory'; }, TypeError);
  assert.throws(() => { nested.subject.attributes[1]![1] = 'mallory'; }, TypeError);
  assert.throws(() => { nested.subject.attributes.push(['CN', 'mallory']); }, TypeError);
  assert.throws(() => { nested.fingerprint.sha256 = '00'; }, TypeError);
  assert.throws(() => { nested.san.email.push('mallory@example.com'); }, TypeError);
  assert.throws(() => { delete nested.pin.sha256; }, TypeError);

  const third = describeCertificate(der, VERIFIED);
  assert.deepEqual(third, snapshot);
  assert.deepEqual(second, snapshot);
  // A verdict given to one call never shows in another.
  const revoked = describeCertificate(der, { verified: false, errorCode: 'CERT_REVOKED' });
  assert.deepEqual([revoked.verified, revoked.verifyError], [false, 'revoked']);
  assert.deepEqual([third.verified, third.verifyError, third.verifyErrorCode], [true, null, null]);
  assert.deepEqual(describeCertificate(der, VERIFIED), snapshot);
});
