// Client certificates: the names and fingerprints a certificate is known by (identity names, CN and name
// constraints, pin tables, pins against fields), weak keys, AUTH EXTERNAL and what a verdict costs. One file for what
// were several (one test process and one load of the engine instead of one each), each its own describe with its own
// servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate, createHash } from 'node:crypto';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki, clientTlsOptions, type ClientName } from '../helpers/pki.ts';
import { issueClientCertificate, createSelfSignedCertificate, issueServerCertificate, type IssuedCertificate, createCrl } from '../../engine/certificates/index.ts';
import { openssl } from '../certificates/openssl.ts';
import { needs, run } from '../helpers/example.ts';
import { until } from '../helpers/wait.ts';

describe('certificate-identity-names', () => {
  // A certificate field names an account only when it can name one unambiguously: one CN (not two, not a
  // multi-valued RDN), no control, format or space characters (NUL, bidi overrides, a trailing space), and
  // nothing that lowercasing turns into another account's name (U+212A KELVIN SIGN lowercases to "k").
  // Each certificate is signed by the listener's CA (it verifies), and is tried with AUTH EXTERNAL on a
  // `field: CN` listener and with autoLogin on another; a well-formed CN still works.
  let pki: TestPki;
  let server: TestServer;
  let ca = '';

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    const tls = `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }`;
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:
  - { name: external, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { field: CN }, limits: { greetingDelayMs: 0, authFailuresPerIp: 1000 } }
  - { name: auto, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { field: CN, autoLogin: true }, limits: { greetingDelayMs: 0 } }
`,
      scripts: {
        // What the session is logged in as, and the identity the certificate gave (JSON keeps a NUL visible).
        'mailfrom.ts': `export default (ctx) => reject(JSON.stringify([ctx.connection.auth?.username ?? null, ctx.connection.certificateIdentity ?? null]), { code: 550 });`,
      },
    });
  });
  after(() => server.stop());

  /** The CN's identity as each listener sees it: [EXTERNAL's reply code, who it logged in as, autoLogin's login]. */
  async function tryName(rdns: Array<Record<string, string[]>>): Promise<{ external: number; as: unknown; auto: unknown }> {
    const leaf = await issueClientCertificate(pki.authorities.ca, { commonName: 'unused', rdns, keyType: 'ecdsa' });
    const session = async (listener: string, command?: string): Promise<{ code: number | null; facts: unknown }> => {
      const c = await SmtpTestClient.connect(server.port(listener));
      try {
        await c.hello({ starttls: { ca, cert: leaf.cert, key: leaf.key } });
        const code = command ? (await c.command(command)).code : null;
        const mail = await c.command('MAIL FROM:<x@example.com>');
        return { code, facts: JSON.parse(mail.text.replace(/^550 5\.7\.1 /, '')) };
      } finally {
        c.socket.destroy();
      }
    };
    const external = await session('external', 'AUTH EXTERNAL =');
    const auto = await session('auto');
    return { external: external.code!, as: external.facts, auto: auto.facts };
  }

  test('a plain CN is the identity: AUTH EXTERNAL logs in as it, autoLogin too (the test can fail)', async () => {
    assert.deepEqual(await tryName([{ O: ['Example'] }, { CN: ['Kate'] }]), { external: 235, as: ['kate', 'kate'], auto: ['kate', 'kate'] });
  });

  test('U+212A KELVIN SIGN does not lowercase into another account: no identity', async () => {
    assert.deepEqual(await tryName([{ CN: ['\u212Aate'] }]), { external: 535, as: [null, null], auto: [null, null] });
  });

  test('U+0130 (lowercases to "i" and a combining dot) names no account', async () => {
    assert.deepEqual(await tryName([{ CN: ['\u0130an'] }]), { external: 535, as: [null, null], auto: [null, null] });
  });

  test('control, format and space characters: NUL, a bidi override, a trailing space, a line separator', async () => {
    for (const cn of ['alice\u0000.evil', 'alice\u202e', 'alice ', 'ali\u2028ce', 'alice\u200b']) {
      assert.deepEqual(await tryName([{ CN: [cn] }]), { external: 535, as: [null, null], auto: [null, null] }, JSON.stringify(cn));
    }
  });

  test('two CNs, in two RDNs or in one multi-valued RDN, name no account', async () => {
    assert.deepEqual(await tryName([{ CN: ['mallory'] }, { CN: ['alice'] }]), { external: 535, as: [null, null], auto: [null, null] });
    assert.deepEqual(await tryName([{ CN: ['mallory', 'alice'] }]), { external: 535, as: [null, null], auto: [null, null] });
  });

  test('a CN longer than any address names no account', async () => {
    assert.deepEqual(await tryName([{ CN: ['a'.repeat(250) + '@x.example'] }]), { external: 535, as: [null, null], auto: [null, null] });
  });

  // The sender binding compares an identity's domain IDNA-mapped (senderKey): admin@ｅｘａｍｐｌｅ.com sends as
  // admin@example.com. A CA that checks requests for @example.com by string issued such a CN, and it spoke for the
  // account. An address must be NFC with its domain in its A-label or U-label form exactly; both forms still work.
  test('an address CN in another spelling of a domain (fullwidth, ideographic full stop, trailing dot, NFD) names no account', async () => {
    for (const cn of ['admin@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com', 'admin@example\u3002com', 'admin@example.com.', 'admin@ex\u00adample.com', 'jose\u0301@example.com']) {
      assert.deepEqual(await tryName([{ CN: [cn] }]), { external: 535, as: [null, null], auto: [null, null] }, JSON.stringify(cn));
    }
    for (const [cn, as] of [['Alice@B\u00dcCHER.example', 'alice@b\u00fccher.example'], ['alice@xn--bcher-kva.example', 'alice@xn--bcher-kva.example'], ['jos\u00e9@example.com', 'jos\u00e9@example.com']]) {
      const r = await tryName([{ CN: [cn!] }]);
      assert.equal(r.external, 235, cn);
      // The script's reply is 7-bit here (no SMTPUTF8): the identity's non-ASCII characters come back as "?".
      assert.deepEqual(r.as, [as!.replace(/[^\x00-\x7f]/gu, '?'), as!.replace(/[^\x00-\x7f]/gu, '?')], cn);
    }
  });
});

describe('cn-name-constraints', () => {
  // A sub-CA limited by name constraints to e-mail addresses @sub.example.com (made with the openssl CLI, as an
  // administrator would) may not issue an account name outside them through the CN: OpenSSL checks a leaf's SAN
  // e-mails and emailAddress against rfc822Name constraints, but its CN only as a host name. With `field: CN`,
  // CN=admin@example.com from that sub-CA verified and logged in as admin@example.com. Node gives a server no
  // certificate the client sent but its own, so the constraints of an intermediate only the client sends are
  // unknown: then a CN names no account (list the intermediate in caFiles, or use emailAddress or sanEmail).
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
});

describe('pin-table-fingerprints', () => {
  // A pin table written the way Postfix tables are: relay_clientcerts lines hold certificate fingerprints,
  // in md5 below compatibility_level 3.6 or sha256 (`openssl x509 -fingerprint -sha256`). Neither is a pin (the
  // SHA-256 of the public key), so neither names an account; the migration must not fail without a word.
  let pki: TestPki;
  let server: TestServer;
  const md5Colon = (hex: string): string => hex.toUpperCase().match(/../g)!.join(':');

  before(async () => {
    pki = await makeTestPki();
    server = await startTestServer({
      files: {
        devices: [
          `${pki.clients.alice.fingerprintSha256Colon}   alice@example.com`, // openssl x509 -noout -fingerprint -sha256
          `${md5Colon(pki.clients.bob.fingerprintMd5)}   bob@example.com`, // openssl x509 -noout -fingerprint -md5
          `${pki.clients.ecdsa.pinColon}   ec@example.com`, // a real pin (Postfix pkey_fingerprint, sha256)
        ].join('\n') + '\n',
      },
      config: `
localDomains: [example.com]
tables: { devices: ./devices }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { pins: devices, autoLogin: true }
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(() => server.stop());

  const swaks = (client: 'alice' | 'ecdsa') => run('swaks', ['--server', '127.0.0.1', '--port', String(server.port('sub')), '--tls',
    '--tls-cert', pki.clients[client].cert, '--tls-key', pki.clients[client].key, '--ehlo', 'laptop.example',
    '--from', `${client === 'alice' ? 'alice' : 'ec'}@example.com`, '--to', 'someone@example.com', '--quit-after', 'RCPT']);

  test('an md5 fingerprint in a pin table is warned about at start, naming the table and the digest', () => {
    const warning = server.logs.find((l) => l.level === 40 && /pin table devices .* can never match/.test(String(l.msg)));
    assert.ok(warning, JSON.stringify(server.logs.filter((l) => l.level === 40)));
    assert.match(String(warning.msg), new RegExp(`${pki.clients.bob.fingerprintMd5} \\(md5\\)`));
    assert.match(String(warning.msg), /postern\.yaml:\d+:\d+: listeners\[0\]\.certificateIdentity\.pins/);
    assert.equal(warning.listener, 'sub');
  });

  test('a certificate listed by its SHA-256 fingerprint names no account, and the log says why (swaks)', needs('swaks'), async () => {
    const r = await swaks('alice');
    assert.match(r.stdout, /<~\* 530 5\.7\.0/, r.output);
    await until('the fingerprint warning', () => server.logs.some((l) => l.level === 40 && /lists this client certificate's SHA-256 fingerprint, not its public key's/.test(String(l.msg))));
    const warning = server.logs.find((l) => /lists this client certificate's SHA-256 fingerprint/.test(String(l.msg)))!;
    assert.equal(warning.fingerprint, pki.clients.alice.fingerprintSha256Colon);
    assert.match(String(warning.msg), new RegExp(pki.clients.alice.pinBase64Url));
  });

  test('a real pin logs in, with no such warning', needs('swaks'), async () => {
    const before = server.logs.filter((l) => l.level === 40).length;
    const r = await swaks('ecdsa');
    assert.equal(r.code, 0, r.output);
    assert.match(r.stdout, /<~  250 2\.1\.5/);
    assert.equal(server.logs.filter((l) => l.level === 40).length, before);
  });
});

describe('pin-versus-field', () => {
  // A pin and a field that disagree: anyone may pin a public key to their own account (the account page takes a
  // pasted certificate, and certificates are public), so a CA-verified certificate whose field names an account
  // is that account's, whatever a pin says. Where they agree, or where the field names nobody (unverified, no
  // such field), the pin decides as before: its further senders and all.
  let pki: TestPki;
  let server: TestServer;

  before(async () => {
    pki = await makeTestPki();
    server = await startTestServer({
      files: {
        devices: [
          `${pki.clients.alice.pinBase64Url} bob@example.com`, // bob pinned alice's key (from her certificate) to himself
          `${pki.clients.ecdsa.pinBase64Url} ec@example.com alias@example.com`, // the field's own account, with a further sender
          `${pki.clients.selfsigned.pinBase64Url} carol@example.com`, // unverified: only the pin names it
          `${pki.clients.stranger.pinBase64Url} dave@example.com`, // another CA's (unverified here)
        ].join('\n') + '\n',
      },
      config: `
localDomains: [example.com]
tables: { devices: ./devices }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
    auth: { mechanisms: [EXTERNAL] }
    certificateIdentity: { field: emailAddress, pins: devices }
    senderLogin: { enforce: true }
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(() => server.stop());

  /** AUTH EXTERNAL with `name`'s certificate: who it logged in as (from the log), and MAIL FROM's reply for `from`. */
  async function login(name: ClientName, from: string): Promise<{ user: unknown; mail: number }> {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: await clientTlsOptions(pki, name) });
    const auth = await c.command('AUTH EXTERNAL =');
    const user = auth.code === 235 ? server.logs.findLast((l) => l.msg === 'authenticated')?.user : null;
    const mail = (await c.command(`MAIL FROM:<${from}>`)).code;
    await c.quit();
    return { user, mail };
  }

  test('a verified certificate whose field names alice, pinned to bob: alice\'s, not bob\'s', async () => {
    assert.deepEqual(await login('alice', 'alice@example.com'), { user: 'alice@example.com', mail: 250 });
    assert.deepEqual(await login('alice', 'bob@example.com'), { user: 'alice@example.com', mail: 553 });
  });

  test('the pin still decides where it agrees with the field (its further senders too) or the field names nobody', async () => {
    assert.deepEqual(await login('ecdsa', 'alias@example.com'), { user: 'ec@example.com', mail: 250 });
    assert.deepEqual(await login('selfsigned', 'carol@example.com'), { user: 'carol@example.com', mail: 250 });
    // Another CA's certificate with alice's emailAddress: not verified, so the pin names it.
    assert.deepEqual(await login('stranger', 'dave@example.com'), { user: 'dave@example.com', mail: 250 });
  });
});

describe('weak-client-keys', () => {
  // What the listener trusts from a client certificate whose cryptography is weak or whose purpose is not a
  // client's, over real handshakes: a pin of a key too weak names no account; the chain verdicts OpenSSL gives.
  /** A legacy client still willing to present a key below Node's default security level. */
  const LEGACY = 'DEFAULT@SECLEVEL=0';
  const pinOf = (c: IssuedCertificate): string =>
    createHash('sha256').update(new X509Certificate(c.cert).publicKey.export({ type: 'spki', format: 'der' })).digest('hex');

  let pki: TestPki;
  let ca: string;
  let server: TestServer;
  let rsa1024: IssuedCertificate;
  let rsa2048: IssuedCertificate;
  let issued1024: IssuedCertificate;
  let serverOnly: IssuedCertificate;

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    [rsa1024, rsa2048, issued1024, serverOnly] = await Promise.all([
      createSelfSignedCertificate({ commonName: 'old-printer', keyType: 'rsa', rsaBits: 1024 }),
      createSelfSignedCertificate({ commonName: 'new-printer', keyType: 'rsa', rsaBits: 2048 }),
      issueClientCertificate(pki.authorities.ca, { commonName: 'weak@example.com', emailAddress: 'weak@example.com', keyType: 'rsa', rsaBits: 1024 }),
      // One of the organisation's web servers, from the same CA: EKU serverAuth only.
      issueServerCertificate(pki.authorities.ca, { commonName: 'www@example.com', emailAddress: 'www@example.com', dnsNames: ['www.example.com'] }),
    ]);
    const tls = `{ mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }`;
    server = await startTestServer({
      files: { pins: `${pinOf(rsa1024)}  printer@example.com\n${pinOf(rsa2048)}  scanner@example.com\n` },
      config: `
localDomains: [example.com]
tables: { pins: ./pins }
listeners:
  - { name: pinned, listen: "127.0.0.1:0", tls: ${tls}, certificateIdentity: { pins: pins } }
  - { name: field, listen: "127.0.0.1:0", tls: ${tls}, certificateIdentity: { field: emailAddress } }
`,
      scripts: {
        'mailfrom.ts': `export default (ctx) => { const c = ctx.connection.clientCertificate;
        return reject([ctx.connection.certificateIdentity ?? 'no-identity', c ? c.verified + ' ' + c.verifyError + ' ' + c.verifyErrorCode : 'none'].join(' '), { code: 550 }); };`,
      },
    });
  });
  after(() => server.stop());

  async function seen(listener: string, c: IssuedCertificate): Promise<string> {
    const client = await SmtpTestClient.connect(server.port(listener), { implicitTls: { ca, cert: c.cert, key: c.key, ciphers: LEGACY } });
    await client.hello();
    const r = await client.command('MAIL FROM:<x@elsewhere.example>');
    await client.quit();
    return r.text.replace(/^550 5\.7\.1 /, '');
  }

  test('a pinned RSA-1024 key names no account; a pinned RSA-2048 key does', async () => {
    assert.equal(await seen('pinned', rsa1024), 'no-identity false invalid EE_KEY_TOO_SMALL');
    assert.match(await seen('pinned', rsa2048), /^scanner@example\.com false self-signed /);
  });

  test('a CA-issued RSA-1024 certificate does not verify (OpenSSL security level 2), so its field names no account', async () => {
    // Node names OpenSSL's EE_KEY_TOO_SMALL only UNSPECIFIED: the listener says which.
    assert.equal(await seen('field', issued1024), 'no-identity false invalid EE_KEY_TOO_SMALL');
  });

  test('a server certificate of the same CA (EKU serverAuth only) is no client certificate: INVALID_PURPOSE, no account', async () => {
    assert.equal(await seen('field', serverOnly), 'no-identity false invalid INVALID_PURPOSE');
  });
});

describe('external', () => {
  // AUTH EXTERNAL (RFC 4422 appendix A, RFC 4954) on STARTTLS and implicit TLS, with every wire form.
  let pki: TestPki;
  let server: TestServer;
  const pem: Record<string, { cert: string; key: string }> = {};

  before(async () => {
    pki = await makeTestPki();
    for (const name of ['alice', 'bob', 'revoked', 'expired', 'selfsigned', 'ed25519', 'stranger'] as const) {
      const c = pki.clients[name];
      pem[name] = { cert: await readFile(c.cert, 'utf8'), key: await readFile(c.key, 'utf8') };
    }
    const tls = `{ cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }`;
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: starttls, ${tls.slice(2)}
    requireTls: true
    auth: { mechanisms: [EXTERNAL, PLAIN], required: true }
    certificateIdentity: { field: emailAddress }
  - name: subs
    listen: 127.0.0.1:0
    tls: { mode: implicit, ${tls.slice(2)}
    auth: { mechanisms: [EXTERNAL, PLAIN], required: true }
    certificateIdentity: { field: emailAddress }
`,
    });
  });
  after(() => server.stop());

  async function startTls(name: keyof typeof pem | null): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), ...(name ? pem[name] : {}) } });
    return c;
  }

  test('EXTERNAL is advertised only after TLS and only with a usable certificate', async () => {
    const plain = await SmtpTestClient.connect(server.port('sub'));
    const before = await plain.hello();
    assert.doesNotMatch(before.text, /AUTH/);
    assert.match(before.text, /STARTTLS/);
    const r = await plain.command('AUTH EXTERNAL =');
    assert.equal(r.code, 538);
    assert.match(r.text, /^538 5\.7\.11 /);
    await plain.quit();

    const alice = await startTls('alice');
    assert.match(alice.transcript.join('\n'), /250[- ]AUTH EXTERNAL PLAIN/);
    await alice.quit();
    const none = await startTls(null);
    const afterTls = none.transcript.join('\n').split('STARTTLS').pop()!;
    assert.match(afterTls, /^S: 250-AUTH PLAIN$/m);
    assert.doesNotMatch(afterTls, /EXTERNAL/);
    await none.quit();
  });

  test('AUTH EXTERNAL = (empty initial response) logs in as the certificate identity', async () => {
    const c = await startTls('alice');
    const r = await c.command('AUTH EXTERNAL =');
    assert.equal(r.text, '235 2.7.0 Authentication successful');
    const m = await c.sendMail('alice@example.com', ['someone@elsewhere.example']);
    assert.match(m.text, /^250 2\.0\.0 Ok: queued as [0-9a-z]+$/);
    await c.quit();
  });

  test('AUTH EXTERNAL <base64 authzid>: own address accepted, another refused with 535 5.7.8', async () => {
    const ok = await startTls('alice');
    assert.equal((await ok.command(`AUTH EXTERNAL ${Buffer.from('alice@example.com').toString('base64')}`)).code, 235);
    await ok.quit();
    const bad = await startTls('alice');
    const r = await bad.command(`AUTH EXTERNAL ${Buffer.from('bob@example.com').toString('base64')}`);
    assert.match(r.text, /^535 5\.7\.8 /);
    await bad.quit();
  });

  test('AUTH EXTERNAL then 334 and the client line: empty line, =, base64, * and bad base64', async () => {
    for (const [line, code] of [['', 235], ['=', 235], [Buffer.from('alice@example.com').toString('base64'), 235], ['*', 501], ['=AAA', 501], ['YWxpY2U', 501]] as const) {
      const c = await startTls('alice');
      const challenge = await c.command('AUTH EXTERNAL');
      assert.equal(challenge.lines[0], '334 ');
      const r = await c.command(line);
      assert.equal(r.code, code, `response ${JSON.stringify(line)}: ${r.text}`);
      if (line === '=AAA') assert.match(r.text, /^501 5\.5\.2 /);
      await c.quit();
    }
  });

  test('AUTH EXTERNAL with bad base64 as initial response is 501 5.5.2', async () => {
    const c = await startTls('alice');
    assert.match((await c.command('AUTH EXTERNAL a=b=')).text, /^501 5\.5\.2 /);
    await c.quit();
  });

  test('an authzid with a control character, C0 or C1 (U+009B, a terminal\'s CSI), or that is not UTF-8, is refused as PLAIN refuses such a username: 501 5.5.4, not as bad base64', async () => {
    const c = await startTls('alice');
    const malformed = '501 5.5.4 Error: malformed SASL response (a missing username, control characters, or not the three PLAIN fields)';
    for (const authzid of ['alice@example.com\x1b[2J', 'alice@example.com\u009b2J', 'alice@example.com\u0085', 'alice@example.com\0']) {
      assert.equal((await c.command(`AUTH EXTERNAL ${Buffer.from(authzid).toString('base64')}`)).text, malformed, JSON.stringify(authzid));
    }
    // Valid base64 of bytes that are not UTF-8, as the initial response and after 334.
    const latin1 = Buffer.from('alice@exampl\xe9.com', 'latin1').toString('base64');
    assert.equal((await c.command(`AUTH EXTERNAL ${latin1}`)).text, malformed);
    assert.equal((await c.command('AUTH EXTERNAL')).code, 334);
    assert.equal((await c.command(latin1)).text, malformed);
    assert.equal((await c.command('AUTH EXTERNAL =')).code, 235, 'the session goes on');
    await c.quit();
  });

  test('certificates without identity: no certificate, untrusted, revoked, expired, self-signed → 535 5.7.8', async () => {
    for (const name of [null, 'stranger', 'revoked', 'expired', 'selfsigned'] as const) {
      const c = await startTls(name);
      const r = await c.command('AUTH EXTERNAL =');
      // EXTERNAL is not offered; a client that tries anyway gets a permanent refusal, never 4xx.
      assert.ok(r.code === 535 || r.code === 504, `${name}: ${r.text}`);
      if (r.code === 535) assert.match(r.text, /^535 5\.7\.8 /);
      await c.quit();
    }
  });

  test('a second AUTH after success is 503 5.5.1; PLAIN with an empty password never authenticates', async () => {
    const c = await startTls('alice');
    assert.equal((await c.command('AUTH EXTERNAL =')).code, 235);
    assert.match((await c.command('AUTH EXTERNAL =')).text, /^503 5\.5\.1 /);
    await c.quit();
    const p = await startTls(null);
    const r = await p.command(`AUTH PLAIN ${Buffer.from('\0alice@example.com\0').toString('base64')}`);
    assert.match(r.text, /^535 5\.7\.8 /);
    await p.quit();
  });

  test('implicit TLS requests the client certificate and EXTERNAL works there', async () => {
    const c = await SmtpTestClient.connect(server.port('subs'), { implicitTls: { ca: await readFile(pki.ca.cert, 'utf8'), ...pem.ed25519 } });
    const ehlo = await c.hello();
    assert.match(ehlo.text, /AUTH EXTERNAL/);
    assert.equal((await c.command('AUTH EXTERNAL =')).code, 235);
    const m = await c.sendMail('ed@example.com', ['x@elsewhere.example']);
    assert.equal(m.code, 250);
    await c.quit();
  });

  test('without AUTH, MAIL FROM on the submission listener is 530 5.7.0', async () => {
    const c = await startTls('alice');
    assert.match((await c.command('MAIL FROM:<alice@example.com>')).text, /^530 5\.7\.0 /);
    await c.quit();
  });
});

describe('certificate-verdict-cost', () => {
  // An open session's certificate is judged again at each MAIL FROM, RCPT TO and DATA (certificate-verdict-since.test.ts),
  // among other things against the listener's CRLs. That look is a Map lookup by serial, but a serial the CRLs list makes
  // it read the certificate, and when its issuer is written otherwise than the CRL's, parse it with OpenSSL (milliseconds
  // for a large one). A pinned device's certificate is of its owner's making, serial included, and CRLs (and so the
  // serials they list) are public: such a session had its certificate parsed again at every command, a thousand times
  // for a transaction of a thousand recipients. The CRLs change only with a reload: one look per CRL set is enough.
  // Counted here by the calls to X509Certificate#checkIssued (the server runs in this process), not timed.
  let pki: TestPki;
  let server: TestServer;
  let ca = '';
  let device: IssuedCertificate;

  const pinOf = (pem: string): string => createHash('sha256').update(new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' })).digest('base64url');

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    device = await createSelfSignedCertificate({ commonName: 'sensor', keyType: 'ecdsa' });
    // The CA's CRL lists a serial that happens to be the device's (its own making).
    const crl = await createCrl(pki.authorities.ca, [device.serial], { nextUpdate: new Date(Date.now() + 30 * 86400_000) });
    await writeFile(join(pki.dir, 'colliding.crl'), crl);
    const tls = `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}], crlFiles: [${join(pki.dir, 'colliding.crl')}] }`;
    server = await startTestServer({
      files: { devices: `${pinOf(device.cert)} sensor@example.com\n` },
      config: `
localDomains: [example.com]
tables: { devices: ./devices }
listeners:
  - { name: pins, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, certificateIdentity: { pins: devices, autoLogin: true }, limits: { greetingDelayMs: 0 } }
`,
    });
  });
  after(() => server.stop());

  test('a pinned certificate whose serial a CRL lists is not parsed again at every command of its session', async () => {
    const c = await SmtpTestClient.connect(server.port('pins'));
    await c.hello({ starttls: { ca, cert: device.cert, key: device.key } });
    const checkIssued = X509Certificate.prototype.checkIssued;
    let parsed = 0;
    X509Certificate.prototype.checkIssued = function (this: X509Certificate, other: X509Certificate) {
      parsed++;
      return checkIssued.call(this, other);
    };
    try {
      assert.match((await c.command('MAIL FROM:<sensor@example.com>')).text, /^250 /, 'the pinned device sends (the test can fail)');
      for (let i = 0; i < 20; i++) assert.match((await c.command(`RCPT TO:<r${i}@example.com>`)).text, /^250 /);
      await c.command('RSET');
    } finally {
      X509Certificate.prototype.checkIssued = checkIssued;
    }
    assert.ok(parsed <= 1, `the certificate was parsed ${parsed} times for 21 commands`);
    c.socket.destroy();
  });
});

describe('client-certificates', () => {
  // request vs require, STARTTLS vs implicit TLS, and the chain verdict for each kind of certificate.
  let pki: TestPki;
  let server: TestServer;
  let ca: string;
  const certs: Record<string, { cert: string; key: string }> = {};
  const NAMES = ['alice', 'bob', 'revoked', 'expired', 'selfsigned', 'ed25519', 'ecdsa', 'stranger'] as const;

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    for (const n of NAMES) certs[n] = { cert: await readFile(pki.clients[n].cert, 'utf8'), key: await readFile(pki.clients[n].key, 'utf8') };
    const tls = (mode: string, cc: string) => `{ mode: ${mode}, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: ${cc}, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }`;
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:
  - { name: request, listen: "127.0.0.1:0", tls: ${tls('starttls', 'request')}, relayClientCertificates: true }
  - { name: require, listen: "127.0.0.1:0", tls: ${tls('starttls', 'require')}, relayClientCertificates: true }
  - { name: implicit-require, listen: "127.0.0.1:0", tls: ${tls('implicit', 'require')}, relayClientCertificates: true }
`,
      scripts: {
        'mailfrom.ts': `export default (ctx) => { const c = ctx.connection.clientCertificate;
        if (ctx.address.localPart === 'verdict') return reject(c ? String(c.verified) + ' ' + c.verifyError : 'none', { code: 550 });
        if (ctx.address.localPart === 'cn') return reject(c ? [...c.subject.CN].map((ch) => ch.codePointAt(0).toString(16)).join(' ') : 'none', { code: 550 });
        if (ctx.address.localPart === 'names') return reject(c ? [c.subject.CN.length, c.subject.O.length, c.san.dns.length, c.san.email.length].join(' ') : 'none', { code: 550 }); };`,
      },
    });
  });
  after(() => server.stop());

  async function verdictFor(name: typeof NAMES[number] | null): Promise<string> {
    const c = await SmtpTestClient.connect(server.port('request'));
    await c.hello({ starttls: { ca, ...(name ? certs[name] : {}) } });
    const r = await c.command('MAIL FROM:<verdict@x.example>');
    await c.quit();
    return r.text.replace(/^550 5\.7\.1 /, '');
  }

  test('request mode: every certificate completes the handshake; scripts see the chain verdict', async () => {
    assert.equal(await verdictFor('alice'), 'true null');
    assert.equal(await verdictFor('bob'), 'true null');
    assert.equal(await verdictFor('ed25519'), 'true null');
    assert.equal(await verdictFor('ecdsa'), 'true null');
    assert.equal(await verdictFor('revoked'), 'false revoked');
    assert.equal(await verdictFor('expired'), 'false expired');
    assert.equal(await verdictFor('selfsigned'), 'false self-signed');
    assert.equal(await verdictFor('stranger'), 'false unknown-issuer');
    assert.equal(await verdictFor(null), 'none');
  });

  test('request mode: only a trusted certificate relays (permit_tls_all_clientcerts)', async () => {
    for (const [name, code] of [['alice', 250], ['revoked', 554], ['selfsigned', 554], [null, 554]] as const) {
      const c = await SmtpTestClient.connect(server.port('request'));
      await c.hello({ starttls: { ca, ...(name ? certs[name] : {}) } });
      await c.command('MAIL FROM:<a@x.example>');
      assert.equal((await c.command('RCPT TO:<r@elsewhere.example>')).code, code, String(name));
      await c.quit();
    }
  });

  test('require mode over STARTTLS: missing or untrusted certificate gets 421 4.7.1 and the connection closes', async () => {
    for (const name of [null, 'selfsigned', 'revoked', 'expired'] as const) {
      const c = await SmtpTestClient.connect(server.port('require'));
      await c.read();
      await c.command('EHLO x.example');
      await c.starttls({ ca, ...(name ? certs[name] : {}) });
      const r = await c.read();
      assert.match(r.text, /^421 4\.7\.1 (No client certificate presented|Client certificate not trusted)/, String(name));
      assert.ok(await c.waitClosed());
    }
    const ok = await SmtpTestClient.connect(server.port('require'));
    await ok.hello({ starttls: { ca, ...certs.alice } });
    assert.equal((await ok.sendMail('a@x.example', ['r@elsewhere.example'])).code, 250);
    await ok.quit();
  });

  test('require mode over implicit TLS: the certificate is really requested; without one, 421 4.7.1', async () => {
    const ok = await SmtpTestClient.connect(server.port('implicit-require'), { implicitTls: { ca, ...certs.ed25519 } });
    assert.equal((await ok.read()).code, 220);
    await ok.quit();
    for (const name of [null, 'stranger'] as const) {
      const c = await SmtpTestClient.connect(server.port('implicit-require'), { implicitTls: { ca, ...(name ? certs[name] : {}) } });
      assert.match((await c.read()).text, /^421 4\.7\.1 /);
      assert.ok(await c.waitClosed());
    }
  });

  test('the Received header records the client certificate the way Postfix does', async () => {
    const c = await SmtpTestClient.connect(server.port('request'));
    await c.hello({ name: 'laptop.example', starttls: { ca, ...certs.selfsigned } });
    const r = await c.sendMail('a@x.example', ['bob@example.com']);
    const id = /queued as (\S+)/.exec(r.text)![1]!;
    const msg = (await server.runtime.spool.readMessage(id)).toString('utf8');
    assert.match(msg, /\r\n\t\(Client CN "eve", Issuer "eve" \(not verified\)\)\r\n/);
    assert.match(msg, /with ESMTPS id /);
    await c.quit();
  });

  test('a certificate with hostile names (8 KB CN, control characters, 2000 SANs): a verdict, the full names for scripts, a Received header within 998 characters per line', async () => {
    const hostile = await createSelfSignedCertificate({
      commonName: `eve\x00\r\nX-Injected: yes ${'A'.repeat(8_000)}`, organization: 'O'.repeat(4_000), keyType: 'ecdsa',
      dnsNames: Array.from({ length: 1000 }, (_, i) => `h${i}.example.com`), sanEmails: Array.from({ length: 1000 }, (_, i) => `u${i}@example.com`),
    });
    const c = await SmtpTestClient.connect(server.port('request'));
    await c.hello({ name: 'laptop.example', starttls: { ca, cert: hostile.cert, key: hostile.key } });
    assert.equal((await c.command('MAIL FROM:<verdict@x.example>')).text, '550 5.7.1 false self-signed');
    assert.equal((await c.command('MAIL FROM:<names@x.example>')).text, `550 5.7.1 ${8_000 + 22} 4000 1000 1000`);
    const r = await c.sendMail('a@x.example', ['bob@example.com']);
    assert.equal(r.code, 250, r.text);
    await c.quit();
    const msg = (await server.runtime.spool.readMessage(/queued as (\S+)/.exec(r.text)![1]!)).toString('utf8');
    const head = msg.slice(0, msg.indexOf('\r\n\r\n'));
    for (const line of head.split('\r\n')) assert.ok(line.length <= 998, `a header line of ${line.length} characters`);
    assert.match(head, /\r\n\t\(Client CN "eve\?\?\?X-Injected: yes A{42}\.\.\.", Issuer "eve\?\?\?X-Injected: yes A{42}\.\.\." \(not verified\)\)\r\n/);
    assert.ok(!/^X-Injected/m.test(head), head);
  });

  test('a CN with C1 controls, a bidi override, a zero-width space and a line separator: scripts see it as it is, the log line shows escapes', async () => {
    const cn = 'al\u202Eecila\u009b2J\u200b\u2028x';
    const odd = await createSelfSignedCertificate({ commonName: cn, keyType: 'ecdsa' });
    const c = await SmtpTestClient.connect(server.port('request'));
    await c.hello({ starttls: { ca, cert: odd.cert, key: odd.key } });
    assert.equal((await c.command('MAIL FROM:<cn@x.example>')).text, `550 5.7.1 ${[...cn].map((ch) => ch.codePointAt(0)!.toString(16)).join(' ')}`);
    await c.quit();
    const line = server.logs.find((l) => l.msg === 'TLS established' && String((l.cert as { subject?: string } | null)?.subject).startsWith('CN=al'));
    const subject = (line!.cert as { subject: string }).subject;
    assert.equal(subject, 'CN=al\\E2\\80\\AEecila\\C2\\9B2J\\E2\\80\\8B\\E2\\80\\A8x');
    assert.doesNotMatch(subject, /[\p{Cc}\p{Cf}\u2028\u2029]/u);
  });

  test('a certificate OpenSSL takes but whose fields cannot be read (a notBefore that is no time): no certificate in request mode, 421 in require mode', async () => {
    const good = await createSelfSignedCertificate({ commonName: 'mangled', keyType: 'ecdsa' });
    const der = Buffer.from(good.cert.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
    const at = der.indexOf(Buffer.from([0x17, 0x0d])); // the notBefore UTCTime, 13 characters
    der.write('AAAAAAAAAAAAZ', at + 2, 'latin1');
    const cert = `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE-----\n`;
    const c = await SmtpTestClient.connect(server.port('request'));
    await c.hello({ starttls: { ca, cert, key: good.key } });
    assert.equal((await c.command('MAIL FROM:<verdict@x.example>')).text, '550 5.7.1 none');
    assert.equal((await c.sendMail('a@x.example', ['bob@example.com'])).code, 250, 'the session goes on');
    await c.quit();
    assert.ok(server.logs.some((l) => l.msg === 'client certificate unreadable: treated as none' && /malformed/.test(String(l.reason))));
    const r = await SmtpTestClient.connect(server.port('require'));
    await r.read();
    await r.command('EHLO x.example');
    await r.starttls({ ca, cert, key: good.key });
    assert.equal((await r.read()).text, '421 4.7.1 Client certificate not trusted (unreadable)');
    assert.ok(await r.waitClosed());
  });

  test('strict mode aborts the handshake for an untrusted certificate; pins satisfy require without a CA verdict', async () => {
    const s = await startTestServer({
      files: { pins: `${pki.clients.selfsigned.pinBase64Url}  eve@example.com\n` },
      config: `
tables: { pins: ./pins }
listeners:
  - name: strict
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: require, strict: true, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }
  - name: pinned
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: require, strict: true, caFiles: [${pki.ca.cert}] }
    auth: { required: true }
    certificateIdentity: { pins: pins, autoLogin: true }
`,
    });
    try {
      const bad = await SmtpTestClient.connect(s.port('strict'), { implicitTls: { ca, ...certs.selfsigned } }).catch(() => null);
      if (bad) {
        await assert.rejects(bad.read(30_000), /connection closed/, 'no SMTP session for an untrusted certificate');
      }
      const good = await SmtpTestClient.connect(s.port('strict'), { implicitTls: { ca, ...certs.alice } });
      assert.equal((await good.read()).code, 220);
      await good.quit();
      const eve = await SmtpTestClient.connect(s.port('pinned'), { implicitTls: { ca, ...certs.selfsigned } });
      const ehlo = await eve.hello();
      assert.equal(ehlo.code, 250);
      const m = await eve.sendMail('eve@example.com', ['r@elsewhere.example']);
      assert.equal(m.code, 250, 'pinned key logged in without AUTH and may relay');
      await eve.quit();
      const stranger = await SmtpTestClient.connect(s.port('pinned'), { implicitTls: { ca, ...certs.stranger } }).catch(() => null);
      if (stranger) await assert.rejects(stranger.read(30_000), /connection closed/, 'strict: unpinned, untrusted → no session');
      // A CA-verified certificate that is not pinned has no identity: auth.required refuses MAIL.
      const alice = await SmtpTestClient.connect(s.port('pinned'), { implicitTls: { ca, ...certs.alice } });
      await alice.hello();
      assert.equal((await alice.command('MAIL FROM:<alice@example.com>')).text, '530 5.7.0 Authentication required');
      await alice.quit();
    } finally { await s.stop(); }
  });

  test('after a certificate auto-login one AUTH is still allowed; a failed or cancelled one keeps the certificate login', async () => {
    const { hashPassword } = await import('../../engine/auth/password-hash.ts');
    const s = await startTestServer({
      files: { pins: `${pki.clients.selfsigned.pinColon}  eve@example.com\n`, users: `eve@example.com:${await hashPassword('s3cret')}\n` },
      config: `
users: ./users
tables: { pins: ./pins }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request }
    auth: { mechanisms: [EXTERNAL, PLAIN], required: true }
    certificateIdentity: { pins: pins, autoLogin: true }
`,
    });
    try {
      const c = await SmtpTestClient.connect(s.port('sub'), { implicitTls: { ca, ...certs.selfsigned } });
      const ehlo = await c.hello();
      assert.match(ehlo.text, /AUTH EXTERNAL PLAIN/, 'AUTH still offered after the auto-login');
      assert.match((await c.command(`AUTH PLAIN ${Buffer.from('\0eve@example.com\0wrong').toString('base64')}`)).text, /^535 5\.7\.8 /);
      assert.equal((await c.command('AUTH PLAIN')).lines[0], '334 ');
      assert.equal((await c.command('*')).code, 501);
      assert.equal((await c.sendMail('eve@example.com', ['r@elsewhere.example'])).code, 250, 'still logged in by certificate');
      assert.equal((await c.command(`AUTH PLAIN ${Buffer.from('\0eve@example.com\0s3cret').toString('base64')}`)).text, '235 2.7.0 Authentication successful');
      assert.match((await c.command('AUTH EXTERNAL =')).text, /^503 5\.5\.1 /);
      await c.quit();
    } finally { await s.stop(); }
  });
});
