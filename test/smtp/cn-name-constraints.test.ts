// A sub-CA limited by name constraints to e-mail addresses @sub.example.com (made with the openssl CLI, as an
// administrator would) may not issue an account name outside them through the CN: OpenSSL checks a leaf's SAN
// e-mails and emailAddress against rfc822Name constraints, but its CN only as a host name. With `field: CN`,
// CN=admin@example.com from that sub-CA verified and logged in as admin@example.com. Node gives a server no
// certificate the client sent but its own, so the constraints of an intermediate only the client sends are
// unknown: then a CN names no account (list the intermediate in caFiles, or use emailAddress or sanEmail).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { openssl } from '../certificates/openssl.ts';

let pki: TestPki;
let server: TestServer;
let dir: string;
let subCert = '';
let excluding: { cert: string; key: string };

/** A key and a certificate `subject` signed by `ca` with the extensions `ext` (openssl x509 -extfile). */
async function sign(name: string, subject: string, ext: string, ca: { cert: string; key: string }, utf8 = false): Promise<{ cert: string; key: string }> {
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const cert = join(dir, `${name}.crt`);
  await writeFile(join(dir, `${name}.ext`), ext);
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, ...(utf8 ? ['-utf8'] : []), '-subj', subject, '-out', csr]);
  openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', `0x${Date.now().toString(16)}${name.length}`, '-days', '30', '-extfile', join(dir, `${name}.ext`), '-out', cert]);
  return { cert, key };
}

const leaves: Record<string, { cert: string; key: string }> = {};

before(async () => {
  pki = await makeTestPki();
  dir = await mkdtemp(join(tmpdir(), 'postern-nc-'));
  const sub = await sign('sub', '/CN=Sub CA', 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nnameConstraints=critical,permitted;email:sub.example.com\n', pki.ca);
  const leaf = (san: string) => `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=${san}\n`;
  const chain = async (name: string, subject: string, san: string): Promise<void> => {
    const l = await sign(name, subject, leaf(san), sub);
    leaves[name] = { cert: await readFile(l.cert, 'utf8') + await readFile(sub.cert, 'utf8'), key: await readFile(l.key, 'utf8') };
  };
  await chain('outside', '/CN=admin@example.com', 'email:x@sub.example.com');
  await chain('inside', '/CN=x@sub.example.com', 'email:x@sub.example.com');
  await chain('plain', '/CN=admin', 'email:x@sub.example.com');
  subCert = sub.cert;
  // A sub-CA kept out of example.com, bücher.example and one mailbox, and CNs that spell those another way.
  excluding = await sign('excluding', '/CN=Excluding CA', 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' +
    'nameConstraints=critical,excluded;email:example.com,excluded;email:xn--bcher-kva.example,excluded;email:boss@other.example\n', pki.ca);
  for (const [name, cn] of [['fullwidth', 'admin@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com'], ['ideographicDot', 'admin@example\u3002com'], ['uLabel', 'admin@b\u00fccher.example'],
    ['mailboxCase', 'Boss@other.example'], ['allowed', 'x@other.example']] as const) {
    const l = await sign(name, `/CN=${cn}`, leaf('email:x@other.example'), excluding, true);
    leaves[name] = { cert: await readFile(l.cert, 'utf8') + await readFile(excluding.cert, 'utf8'), key: await readFile(l.key, 'utf8') };
  }
  leaves.direct = { cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') };
  server = await startTestServer({
    config: `
listeners:
  - name: root
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
    auth: { mechanisms: [EXTERNAL] }
    certificateIdentity: { field: CN }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 1000 }
  - name: listed
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}, ${subCert}] }
    auth: { mechanisms: [EXTERNAL] }
    certificateIdentity: { field: CN }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 1000 }
  - name: excluding
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}, ${excluding.cert}] }
    auth: { mechanisms: [EXTERNAL] }
    certificateIdentity: { field: CN }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 1000 }
`,
  });
});
after(async () => {
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

/** AUTH EXTERNAL with the leaf: who it logged in as, or the reply code. */
async function login(listener: string, name: string): Promise<string | number> {
  const c = await SmtpTestClient.connect(server.port(listener));
  await c.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), ...leaves[name]! } });
  const auth = await c.command('AUTH EXTERNAL =');
  await c.quit();
  return auth.code === 235 ? String(server.logs.findLast((l) => l.msg === 'authenticated')?.user) : auth.code;
}

test('sub-CA in caFiles: a CN within its e-mail constraints is the identity; the CA without constraints is unaffected (the test can fail)', async () => {
  assert.equal(await login('listed', 'inside'), 'x@sub.example.com');
  assert.equal(await login('listed', 'direct'), 'alice');
  assert.equal(await login('root', 'direct'), 'alice');
});

test('sub-CA in caFiles: a CN outside its constraints, or not an address at all, names no account', async () => {
  assert.equal(await login('listed', 'outside'), 535);
  assert.equal(await login('listed', 'plain'), 535);
});

test('sub-CA sent by the client only (its constraints unknown): no CN names an account', async () => {
  for (const name of ['outside', 'inside', 'plain']) assert.equal(await login('root', name), 535, name);
});

// The CN is compared with the constraints as the account it names is used: case-folded, its domain by its A-labels
// (senderKey binds admin@ｅｘａｍｐｌｅ.com, admin@example。com and admin@bücher.example to the MAIL FROM
// admin@example.com and admin@xn--bcher-kva.example). Compared as written, a sub-CA kept out of example.com
// issued CN=admin@ｅｘａｍｐｌｅ.com and that certificate sent as admin@example.com; likewise Boss@ past boss@.
test('sub-CA with excluded subtrees: a CN spelling an excluded domain or mailbox another way names no account', async () => {
  assert.equal(await login('excluding', 'allowed'), 'x@other.example');
  for (const name of ['fullwidth', 'ideographicDot', 'uLabel', 'mailboxCase']) assert.equal(await login('excluding', name), 535, name);
});
