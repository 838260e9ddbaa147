// What Node/OpenSSL really report for client certificates over a real TLS handshake on 127.0.0.1,
// with the settings the listener uses: requestCert, rejectUnauthorized:false, `ca` and `crl`.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { makeTestPki, type TestPki, type ClientName } from '../helpers/pki.ts';
import {
  createCertificateAuthority, createCrl, describeCertificate, issueClientCertificate, TrustedIssuers,
  type Authority,
} from '../../engine/certificates/index.ts';

let pki: TestPki;
let server: { cert: string; key: string };
let ca: Authority;
let other: Authority;
let crl: string;
let otherCrl: string;
const clients = {} as Record<ClientName, { cert: string; key: string }>;

before(async () => {
  pki = await makeTestPki();
  server = { cert: await readFile(pki.server.cert, 'utf8'), key: await readFile(pki.server.key, 'utf8') };
  ({ ca, otherCa: other } = pki.authorities);
  crl = await readFile(pki.crl, 'utf8');
  otherCrl = await readFile(pki.otherCa.crl, 'utf8');
  for (const [name, c] of Object.entries(pki.clients)) {
    clients[name as ClientName] = { cert: await readFile(c.cert, 'utf8'), key: await readFile(c.key, 'utf8') };
  }
});

interface Outcome {
  authorized: boolean;
  code: string | null;
  /** The DER the server saw. */
  der: Buffer;
  /** Node's peerCertificate.pubkey (what the pin must NOT be computed from). */
  pubkey: Buffer | undefined;
}

/** One handshake: a server with the listener's settings, a client presenting `client`. */
async function handshake(trust: { ca: string[]; crl?: string[] }, client: { cert: string; key: string }): Promise<Outcome> {
  const srv = tls.createServer({ ...server, requestCert: true, rejectUnauthorized: false, ca: trust.ca, crl: trust.crl });
  const seen = new Promise<Outcome>((resolve) => srv.once('secureConnection', (socket) => {
    const peer = socket.getPeerCertificate(false);
    resolve({
      authorized: socket.authorized,
      code: socket.authorizationError ? String(socket.authorizationError) : null,
      der: peer.raw, pubkey: peer.pubkey,
    });
    socket.end();
  }));
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const socket = tls.connect({ port: (srv.address() as AddressInfo).port, host: '127.0.0.1', servername: 'localhost', ca: ca.cert, ...client });
  socket.on('error', () => { /* the server ends the connection */ });
  try {
    return await seen;
  } finally {
    socket.destroy();
    srv.close();
  }
}

const verdict = (o: Outcome): { verified: boolean; errorCode: string | null } => ({ verified: o.authorized, errorCode: o.code });

test('valid RSA, ECDSA and Ed25519 client certificates are authorized, with and without the CRL', async () => {
  for (const name of ['alice', 'bob', 'ecdsa', 'ed25519'] as const) {
    for (const trust of [{ ca: [ca.cert] }, { ca: [ca.cert], crl: [crl] }]) {
      const o = await handshake(trust, clients[name]);
      assert.deepEqual([o.authorized, o.code], [true, null], `${name} crl=${!!trust.crl}`);
      const pc = describeCertificate(o.der, verdict(o));
      assert.equal(pc.verified, true);
      assert.equal(pc.pin.sha256, pki.clients[name].pinSha256, name);
    }
  }
});

test('the failure matrix: revoked, expired, self-signed, foreign CA', async () => {
  const cases: Array<[string, { ca: string[]; crl?: string[] }, { cert: string; key: string }, string, string]> = [
    ['revoked (CRL as the crl option)', { ca: [ca.cert], crl: [crl] }, clients.revoked, 'CERT_REVOKED', 'revoked'],
    ['revoked, but no CRL configured', { ca: [ca.cert] }, clients.revoked, '', ''],
    ['expired', { ca: [ca.cert], crl: [crl] }, clients.expired, 'CERT_HAS_EXPIRED', 'expired'],
    ['self-signed', { ca: [ca.cert] }, clients.selfsigned, 'DEPTH_ZERO_SELF_SIGNED_CERT', 'self-signed'],
    // A leaf alone whose issuer the server does not know.
    ['foreign CA, leaf only', { ca: [ca.cert] }, clients.stranger, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'unknown-issuer'],
    // The foreign root sent along: OpenSSL names the untrusted self-signed root.
    ['foreign CA, root sent along', { ca: [ca.cert] }, { cert: clients.stranger.cert + other.cert, key: clients.stranger.key },
      'SELF_SIGNED_CERT_IN_CHAIN', 'self-signed'],
  ];
  for (const [label, trust, client, code, reason] of cases) {
    const o = await handshake(trust, client);
    if (!code) {
      assert.deepEqual([o.authorized, o.code], [true, null], label);
      continue;
    }
    assert.deepEqual([o.authorized, o.code], [false, code], label);
    const pc = describeCertificate(o.der, verdict(o));
    assert.deepEqual([pc.verified, pc.verifyError, pc.verifyErrorCode], [false, reason, code], label);
  }
});

test('UNABLE_TO_GET_ISSUER_CERT_LOCALLY: a chain through an intermediate whose root is not trusted', async () => {
  const intermediate = await createCertificateAuthority({ commonName: 'Other Intermediate', keyType: 'ecdsa', issuer: other });
  const leaf = await issueClientCertificate(intermediate, { commonName: 'far-away', keyType: 'ecdsa' });
  const chain = { cert: leaf.cert + intermediate.cert, key: leaf.key };
  const o = await handshake({ ca: [ca.cert] }, chain);
  assert.deepEqual([o.authorized, o.code], [false, 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY']);
  assert.equal(describeCertificate(o.der, verdict(o)).verifyError, 'unknown-issuer');
  // Trusting the root makes the same chain verify; the described certificate is the leaf.
  const ok = await handshake({ ca: [ca.cert, other.cert] }, chain);
  assert.deepEqual([ok.authorized, ok.code], [true, null]);
  assert.equal(describeCertificate(ok.der, verdict(ok)).subject.CN, 'far-away');
});

test('CERT_NOT_YET_VALID and CERT_SIGNATURE_FAILURE', async () => {
  const future = await issueClientCertificate(ca, { commonName: 'future', keyType: 'ecdsa', notBefore: new Date(Date.now() + 86400_000) });
  const o = await handshake({ ca: [ca.cert], crl: [crl] }, future);
  assert.deepEqual([o.code, describeCertificate(o.der, verdict(o)).verifyError], ['CERT_NOT_YET_VALID', 'not-yet-valid']);
  // alice's certificate with one signature byte flipped: issuer and key identifiers still match.
  const tampered = tamper(clients.alice.cert);
  const t = await handshake({ ca: [ca.cert] }, { cert: tampered, key: clients.alice.key });
  assert.deepEqual([t.code, describeCertificate(t.der, verdict(t)).verifyError], ['CERT_SIGNATURE_FAILURE', 'bad-signature']);
});

test('with a CRL configured, every CA in the chain needs one: otherwise UNABLE_TO_GET_CRL', async () => {
  // The stranger's CA is trusted, but only our CA has a CRL.
  const missing = await handshake({ ca: [ca.cert, other.cert], crl: [crl] }, clients.stranger);
  assert.deepEqual([missing.authorized, missing.code], [false, 'UNABLE_TO_GET_CRL']);
  assert.equal(describeCertificate(missing.der, verdict(missing)).verifyError, 'crl-missing');
  const both = await handshake({ ca: [ca.cert, other.cert], crl: [crl, otherCrl] }, clients.stranger);
  assert.deepEqual([both.authorized, both.code], [true, null]);
  // The root of a chain needs its CRL too (Node checks the whole chain, as CRL_CHECK_ALL).
  const intermediate = await createCertificateAuthority({ commonName: 'Other Intermediate', keyType: 'ecdsa', issuer: other });
  const leaf = await issueClientCertificate(intermediate, { commonName: 'far-away', keyType: 'ecdsa' });
  const chain = { cert: leaf.cert + intermediate.cert, key: leaf.key };
  const intermediateCrl = await createCrl(intermediate);
  const leafOnly = await handshake({ ca: [ca.cert, other.cert], crl: [intermediateCrl] }, chain);
  assert.equal(leafOnly.code, 'UNABLE_TO_GET_CRL');
  const all = await handshake({ ca: [ca.cert, other.cert], crl: [intermediateCrl, otherCrl] }, chain);
  assert.deepEqual([all.authorized, all.code], [true, null]);
});

test('with a CRL configured, CRL errors mask the real reason; TrustedIssuers recovers it', async () => {
  const trust = { ca: [ca.cert], crl: [crl] };
  const issuers = new TrustedIssuers(trust.ca);
  // OpenSSL keeps verifying after an error and Node reports the last one.
  const self = await handshake(trust, clients.selfsigned);
  assert.equal(self.code, 'UNABLE_TO_GET_CRL');
  assert.equal(issuers.explainMissingCrl(self.der), 'DEPTH_ZERO_SELF_SIGNED_CERT');
  const rooted = await handshake(trust, { cert: clients.stranger.cert + other.cert, key: clients.stranger.key });
  assert.equal(rooted.code, 'UNABLE_TO_GET_CRL');
  assert.equal(issuers.explainMissingCrl(rooted.der), 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY');
  // A certificate of a trusted CA that really lacks a CRL stays "crl-missing".
  const both = new TrustedIssuers([ca.cert, other.cert]);
  assert.equal(both.explainMissingCrl(new X509Certificate(clients.stranger.cert).raw), 'UNABLE_TO_GET_CRL');
  assert.equal(both.explainMissingCrl(new X509Certificate(tamper(clients.alice.cert)).raw), 'CERT_SIGNATURE_FAILURE');
  // Revoked and expired at once: the later check (validity) wins.
  const both2 = await issueClientCertificate(ca, {
    commonName: 'old-and-revoked', keyType: 'ecdsa', notBefore: new Date('2020-01-01'), notAfter: new Date('2021-01-01'),
  });
  const o = await handshake({ ca: [ca.cert], crl: [await createCrl(ca, [both2])] }, both2);
  assert.equal(o.code, 'CERT_HAS_EXPIRED');
});

test('an expired or not-yet-valid CRL fails every certificate of its CA', async () => {
  const expired = await createCrl(ca, [], { thisUpdate: new Date('2020-01-01'), nextUpdate: new Date('2020-02-01') });
  const o = await handshake({ ca: [ca.cert], crl: [expired] }, clients.alice);
  assert.deepEqual([o.authorized, o.code], [false, 'CRL_HAS_EXPIRED']);
  assert.equal(describeCertificate(o.der, verdict(o)).verifyError, 'invalid');
  const future = await createCrl(ca, [], { thisUpdate: new Date(Date.now() + 86400_000), nextUpdate: new Date(Date.now() + 40 * 86400_000) });
  assert.equal((await handshake({ ca: [ca.cert], crl: [future] }, clients.alice)).code, 'CRL_NOT_YET_VALID');
});

test("Node's peerCertificate.pubkey is not the SPKI for EC keys; the pin is computed from the real SPKI", async () => {
  const o = await handshake({ ca: [ca.cert] }, clients.ecdsa);
  const spki = new X509Certificate(o.der).publicKey.export({ type: 'spki', format: 'der' });
  assert.ok(o.pubkey && !o.pubkey.equals(spki), 'pubkey is the bare EC point');
  assert.equal(o.pubkey!.length, 65);
  assert.equal(describeCertificate(o.der, verdict(o)).pin.sha256, pki.clients.ecdsa.pinSha256);
});

/** The certificate with one byte of its signature flipped. */
function tamper(pem: string): string {
  const der = Buffer.from(new X509Certificate(pem).raw);
  der[der.length - 5] ^= 0xff;
  return new X509Certificate(der).toString();
}
