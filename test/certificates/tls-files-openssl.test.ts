// loadKeyPair / loadTrustMaterial with material from the openssl CLI (DER CRLs, an openssl CA and its CRL)
// and the exact error and warning texts. (tls-files.test.ts covers the basic cases; this adds the openssl
// side, more mismatches and the end-to-end effect of what was loaded in a real handshake.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { createCertificateAuthority, createCrl, loadKeyPair, loadTrustMaterial, type TrustMaterial } from '../../engine/certificates/index.ts';
import { openssl } from './openssl.ts';

let pki: TestPki;
const scratch = useScratchDir('postern-tls-files-openssl-');
const file = scratch.file;

before(async () => {
  pki = await makeTestPki();
});

/** Rejects with exactly `message`. */
async function rejectsWith(promise: Promise<unknown>, message: string): Promise<void> {
  await assert.rejects(promise, (err: Error) => {
    assert.equal(err.message, message);
    return true;
  });
}

/** A handshake with a server using `trust` the way a listener does; what the server saw. */
async function handshake(trust: TrustMaterial, client: { cert: string; key: string }): Promise<[boolean, string | null]> {
  const srv = tls.createServer({
    cert: await readFile(pki.server.cert, 'utf8'), key: await readFile(pki.server.key, 'utf8'),
    ca: trust.ca, crl: trust.crl.length ? trust.crl : undefined, requestCert: true, rejectUnauthorized: false,
  });
  const seen = new Promise<[boolean, string | null]>((resolve) => srv.once('secureConnection', (s) => {
    resolve([s.authorized, s.authorizationError ? String(s.authorizationError) : null]);
    s.end();
  }));
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const sock = tls.connect({
    port: (srv.address() as AddressInfo).port, host: '127.0.0.1', rejectUnauthorized: false,
    cert: await readFile(client.cert, 'utf8'), key: await readFile(client.key, 'utf8'),
  });
  sock.on('error', () => {});
  sock.on('data', () => {});
  try {
    return await seen;
  } finally {
    sock.destroy();
    srv.close();
  }
}

test('loadKeyPair: a key that does not match → "<key file>: private key does not match certificate <cert file>"', async () => {
  const c = pki.clients;
  const cases: Array<[string, string]> = [
    [pki.server.cert, c.bob.key], // ECDSA P-256 certificate, another ECDSA P-256 key
    [c.alice.cert, c.bob.key], // RSA certificate, ECDSA key
    [c.ed25519.cert, c.selfsigned.key], // Ed25519, another Ed25519 key
    [c.alice.pem, c.ecdsa.key], // a combined key+cert file as the certificate, with a foreign key
  ];
  for (const [cert, key] of cases) {
    await rejectsWith(loadKeyPair(cert, key), `${key}: private key does not match certificate ${cert}`);
  }
  // The combined file also works as the key file of its own certificate.
  const pair = await loadKeyPair(c.alice.cert, c.alice.pem);
  assert.equal(pair.cert, await readFile(c.alice.cert, 'utf8'));
});

test('unreadable files: the error names the file and the reason', async () => {
  const folder = join(scratch.path, 'a-directory.pem');
  await mkdir(folder);
  const missing = join(scratch.path, 'missing.pem');
  await rejectsWith(loadKeyPair(folder, pki.server.key), `${folder}: cannot read: not a regular file`);
  await rejectsWith(loadKeyPair(pki.server.cert, folder), `${folder}: cannot read: not a regular file`);
  await rejectsWith(loadKeyPair(missing, pki.server.key), `${missing}: cannot read: ENOENT`);
  await rejectsWith(loadTrustMaterial({ caFiles: [folder], crlFiles: [] }), `${folder}: cannot read: not a regular file`);
  await rejectsWith(loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [folder] }), `${folder}: cannot read: not a regular file`);
  await rejectsWith(loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [missing] }), `${missing}: cannot read: ENOENT`);
});

test('garbage CA files: text, a DER certificate, a broken PEM body', async () => {
  const text = await file('garbage-ca.pem', 'this is not a certificate\n');
  await rejectsWith(loadTrustMaterial({ caFiles: [text], crlFiles: [] }), `${text}: not a PEM certificate`);
  const der = join(scratch.path, 'ca.der');
  openssl(['x509', '-in', pki.ca.cert, '-outform', 'DER', '-out', der]);
  await rejectsWith(loadTrustMaterial({ caFiles: [der], crlFiles: [] }), `${der}: not a PEM certificate`);
  const broken = await file('broken-ca.pem', (await readFile(pki.ca.cert, 'utf8')).replace(/\n[A-Za-z0-9+/]{64}\n/, '\nAAAA\n'));
  await assert.rejects(loadTrustMaterial({ caFiles: [broken], crlFiles: [] }),
    (err: Error) => err.message.startsWith(`${broken}: unreadable certificate: `));
  // The first problem stops the load; a good file before it does not help.
  await rejectsWith(loadTrustMaterial({ caFiles: [pki.ca.cert, text], crlFiles: [] }), `${text}: not a PEM certificate`);
});

test('a CRL signed by another CA is refused, naming the file and the CRL issuer', async () => {
  await rejectsWith(loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [pki.otherCa.crl] }),
    `${pki.otherCa.crl}: CRL issued by "CN=Other CA" is not signed by any configured CA`);
  // A new CA with exactly our CA's name: same issuer name on the CRL, different key.
  const twin = await createCertificateAuthority({ commonName: 'Postern Test CA', organization: 'Postern Test', keyType: 'ecdsa' });
  const twinCrl = await file('twin.crl', await createCrl(twin, []));
  await rejectsWith(loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [twinCrl] }),
    `${twinCrl}: CRL issued by "O=Postern Test, CN=Postern Test CA" is not signed by any configured CA`);
  // With the issuing CA configured as well, the other CA's CRL is accepted.
  const both = await loadTrustMaterial({ caFiles: [pki.ca.cert, pki.otherCa.cert], crlFiles: [pki.crl, pki.otherCa.crl] });
  assert.deepEqual([both.ca.length, both.crl.length, both.warnings], [2, 2, []]);
});

test('a DER CRL (openssl crl -outform DER) is accepted, re-framed as the same PEM, and revokes in a handshake', async () => {
  const der = join(scratch.path, 'ca.crl.der');
  openssl(['crl', '-in', pki.crl, '-outform', 'DER', '-out', der]);
  assert.notEqual((await readFile(der))[0], '-'.charCodeAt(0));
  const fromDer = await loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [der] });
  const fromPem = await loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [pki.crl] });
  assert.deepEqual(fromDer, fromPem);
  assert.equal(fromDer.crl[0], await readFile(pki.crl, 'utf8'));
  assert.deepEqual(await handshake(fromDer, pki.clients.revoked), [false, 'CERT_REVOKED']);
  assert.deepEqual(await handshake(fromDer, pki.clients.alice), [true, null]);
  // openssl's older "BEGIN CRL" label is accepted too and comes back as "X509 CRL".
  const relabelled = await file('ca.crl.label', (await readFile(pki.crl, 'utf8')).replaceAll('X509 CRL', 'CRL'));
  assert.deepEqual(await loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [relabelled] }), fromPem);
});

/** An openssl-made CA (req -x509) with `openssl ca` revoking one leaf and writing the CRL. */
async function opensslAuthority(name: string, keyArgs: string[]): Promise<{ ca: string; crl: string; leaf: { cert: string; key: string } }> {
  const d = join(scratch.path, name);
  await mkdir(d);
  const p = (f: string): string => join(d, f);
  openssl(['req', '-x509', '-nodes', ...keyArgs, '-keyout', p('ca.key'), '-out', p('ca.crt'), '-days', '30',
    '-subj', `/C=DE/O=OpenSSL Org/CN=${name} Root`, '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  openssl(['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-keyout', p('leaf.key'), '-out', p('leaf.csr'), '-subj', '/CN=leaf']);
  openssl(['x509', '-req', '-in', p('leaf.csr'), '-CA', p('ca.crt'), '-CAkey', p('ca.key'), '-set_serial', '0x1234', '-days', '5', '-out', p('leaf.crt')]);
  await writeFile(p('index.txt'), '');
  await writeFile(p('crlnumber'), '01\n');
  await writeFile(p('ca.cnf'), `[ca]\ndefault_ca = d\n[d]\ndatabase = ${p('index.txt')}\ncrlnumber = ${p('crlnumber')}\ndefault_md = default\ndefault_crl_days = 30\n`);
  openssl(['ca', '-config', p('ca.cnf'), '-keyfile', p('ca.key'), '-cert', p('ca.crt'), '-revoke', p('leaf.crt')]);
  openssl(['ca', '-config', p('ca.cnf'), '-keyfile', p('ca.key'), '-cert', p('ca.crt'), '-gencrl', '-out', p('ca.crl')]);
  return { ca: p('ca.crt'), crl: p('ca.crl'), leaf: { cert: p('leaf.crt'), key: p('leaf.key') } };
}

test('a CA and CRL made by openssl (req -x509, ca -revoke, ca -gencrl) load, PEM or DER, and revoke', async () => {
  const o = await opensslAuthority('p384', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384']);
  assert.match(openssl(['crl', '-in', o.crl, '-noout', '-text']), /Serial Number: 1234/);
  const der = `${o.crl}.der`;
  openssl(['crl', '-in', o.crl, '-outform', 'DER', '-out', der]);
  const trust = await loadTrustMaterial({ caFiles: [o.ca], crlFiles: [o.crl, der] });
  assert.deepEqual(trust.warnings, []);
  assert.deepEqual(trust.crl, [await readFile(o.crl, 'utf8'), await readFile(o.crl, 'utf8')]);
  assert.deepEqual(await handshake(trust, o.leaf), [false, 'CERT_REVOKED']);
  // Without the CRL the same leaf verifies: the refusal above came from the loaded CRL.
  assert.deepEqual(await handshake(await loadTrustMaterial({ caFiles: [o.ca], crlFiles: [] }), o.leaf), [true, null]);
  // And that CRL is refused against our CA.
  await rejectsWith(loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [o.crl] }),
    `${o.crl}: CRL issued by "C=DE, O=OpenSSL Org, CN=p384 Root" is not signed by any configured CA`);
});

test('an Ed448 CA and its CRL load as OpenSSL accepts them', async () => {
  const o = await opensslAuthority('ed448', ['-newkey', 'ed448']);
  openssl(['crl', '-in', o.crl, '-noout', '-CAfile', o.ca]); // throws unless OpenSSL verifies the CRL's signature
  // What Node's TLS does with exactly these files: the revoked leaf is refused as revoked.
  const direct = { ca: [await readFile(o.ca, 'utf8')], crl: [await readFile(o.crl, 'utf8')], warnings: [] };
  assert.deepEqual(await handshake(direct, o.leaf), [false, 'CERT_REVOKED']);
  const trust = await loadTrustMaterial({ caFiles: [o.ca], crlFiles: [o.crl] });
  assert.deepEqual(await handshake(trust, o.leaf), [false, 'CERT_REVOKED']);
});

test('an expired CRL is loaded with a warning naming the file, the date and the consequence', async () => {
  const expired = await file('expired.crl', await createCrl(pki.authorities.ca, [], {
    thisUpdate: new Date('2020-01-01T00:00:00Z'), nextUpdate: new Date('2020-02-01T00:00:00Z'),
  }));
  const trust = await loadTrustMaterial({ caFiles: [pki.ca.cert], crlFiles: [expired] });
  assert.equal(trust.crl.length, 1);
  assert.deepEqual(trust.warnings, [
    `${expired}: CRL expired on 2020-02-01T00:00:00.000Z; every certificate of "O=Postern Test, CN=Postern Test CA" fails with CRL_HAS_EXPIRED`,
  ]);
  // The warning is right: OpenSSL refuses an otherwise valid certificate.
  assert.deepEqual(await handshake(trust, pki.clients.alice), [false, 'CRL_HAS_EXPIRED']);
});
