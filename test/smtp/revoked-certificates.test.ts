// Client certificates revoked or withdrawn: a CA or CRL withdrawn, a pinned certificate revoked, an intermediate,
// revocation in the middle of a transaction, a renewed CA, and since when a verdict holds. One file for what were
// several (one test process and one load of the engine instead of one each), each its own describe with its own
// servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { X509Certificate, createHash } from 'node:crypto';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { clientTlsOptions, makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createCertificateAuthority, issueClientCertificate, createCrl, type IssuedCertificate, type Authority, createSelfSignedCertificate } from '../../engine/certificates/index.ts';
import { until } from '../helpers/wait.ts';
import { runCli } from '../helpers/cli.ts';
import { x509 } from '../../engine/certificates/x509-provider.ts';

describe('ca-withdrawn', () => {
  // A CA taken out of a listener's caFiles withdraws its certificates from sessions already open, as a CRL that
  // revokes them does: a session verified (and logged in) by that CA gets no new transaction after the reload.
  // A reload that keeps the CA (here: another CA added beside it) changes nothing for the session, also for a
  // chain through an intermediate only the client sends (which Node does not show a server: its CA cannot be told).
  // And a handshake that spans the reload: the server chose its CA list at the ClientHello, the client sends its
  // certificate a round trip later, as late as it likes within limits.tlsHandshakeTimeoutMs. Verified against the
  // old list, it was taken as verified by the new one, so it relayed and logged in. A relay on 127.0.0.1 holds the
  // client's second flight (certificate, Finished) until the reload is done.
  let pki: TestPki;
  let server: TestServer;
  let chained: { cert: string; key: string; ca: string };

  before(async () => {
    pki = await makeTestPki();
    const intermediate = await createCertificateAuthority({ commonName: 'Laptops', keyType: 'ecdsa', issuer: pki.authorities.ca });
    const leaf = await issueClientCertificate(intermediate, { commonName: 'carol', emailAddress: 'carol@example.com', keyType: 'ecdsa' });
    chained = { cert: leaf.cert + intermediate.cert, key: leaf.key, ca: await readFile(pki.ca.cert, 'utf8') };
    server = await startTestServer({
      files: { 'trusted.crt': await readFile(pki.ca.cert, 'utf8') },
      config: `
localDomains: [example.com]
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [./trusted.crt] }
    relayClientCertificates: true
    certificateIdentity: { field: emailAddress, autoLogin: true }
    limits: { greetingDelayMs: 0 }
  - name: subx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [./trusted.crt] }
    relayClientCertificates: true
    certificateIdentity: { field: emailAddress, autoLogin: true }
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(() => server.stop());

  async function replaceCaFile(text: string): Promise<void> {
    const generation = server.runtime.generation;
    await writeFile(join(server.dir, 'trusted.crt'), text);
    await until('the CA file is reloaded', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
  }

  test('a session verified by a CA: still served after a reload that keeps the CA, refused once the CA is gone from caFiles', async () => {
    const c = await SmtpTestClient.connect(server.port('sub'), { implicitTls: await clientTlsOptions(pki, 'alice') });
    await c.read();
    await c.command('EHLO laptop.example');
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<someone@elsewhere.example>')).code, 250, 'relayed: verified and logged in');
    await c.command('RSET');
    const viaIntermediate = await SmtpTestClient.connect(server.port('sub'), { implicitTls: chained });
    await viaIntermediate.read();
    await viaIntermediate.command('EHLO laptop.example');
    assert.equal((await viaIntermediate.command('MAIL FROM:<carol@example.com>')).code, 250);
    assert.equal((await viaIntermediate.command('RCPT TO:<someone@elsewhere.example>')).code, 250, 'relayed: verified through the intermediate');
    await viaIntermediate.command('RSET');

    // The CA stays (another one beside it): nothing changes for either session.
    await replaceCaFile(await readFile(pki.ca.cert, 'utf8') + await readFile(pki.otherCa.cert, 'utf8'));
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
    await c.command('RSET');
    assert.equal((await viaIntermediate.command('MAIL FROM:<carol@example.com>')).code, 250);
    await viaIntermediate.command('RSET');

    // The CA is gone: a new handshake would not verify, and neither do these sessions any longer.
    await replaceCaFile(await readFile(pki.otherCa.cert, 'utf8'));
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).text, '550 5.7.1 Client certificate is no longer accepted');
    await c.quit();
    assert.equal((await viaIntermediate.command('MAIL FROM:<carol@example.com>')).text, '550 5.7.1 Client certificate is no longer accepted');
    await viaIntermediate.quit();
    assert.ok(server.logs.some((l) => l.msg === 'client certificate\'s CA no longer in caFiles: MAIL FROM refused'));

    // The same certificate on a new connection: unverified, no identity (the check above agrees with OpenSSL's).
    const fresh = await SmtpTestClient.connect(server.port('sub'), { implicitTls: await clientTlsOptions(pki, 'alice') });
    await fresh.read();
    await fresh.command('EHLO laptop.example');
    await fresh.command('MAIL FROM:<alice@example.com>');
    assert.equal((await fresh.command('RCPT TO:<someone@elsewhere.example>')).code, 554);
    await fresh.quit();
  });

  /**
   * A TCP relay to the listener: once armed (at once with `armed`), it passes the client's next write (its
   * ClientHello) and holds the rest until released.
   */
  async function holdingRelay(port: number, armed: boolean): Promise<{ port: number; arm(): void; release(): void; close(): void }> {
    const held: Buffer[] = [];
    let upstream: net.Socket | undefined;
    let holding = false;
    let passNext = armed;
    const relay = net.createServer((client) => {
      const to = net.connect(port, '127.0.0.1');
      upstream = to;
      to.pipe(client);
      client.on('error', () => to.destroy());
      to.on('error', () => client.destroy());
      client.on('data', (chunk: Buffer) => {
        if (holding) return void held.push(chunk);
        to.write(chunk);
        if (passNext) [passNext, holding] = [false, true];
      });
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    return {
      port: (relay.address() as net.AddressInfo).port,
      arm() { passNext = true; },
      release() { holding = false; for (const chunk of held.splice(0)) upstream!.write(chunk); },
      close() { relay.close(); },
    };
  }

  test('a certificate sent after a reload took its CA out of caFiles is not verified by the CA list of the handshake\'s start', async () => {
    await replaceCaFile(await readFile(pki.ca.cert, 'utf8'));
    const relay = await holdingRelay(server.port('sub'), true);
    try {
      // The client's handshake ends on its side once it has sent its certificate (held by the relay).
      const c = await SmtpTestClient.connect(relay.port, { implicitTls: await clientTlsOptions(pki, 'alice') });
      await replaceCaFile(await readFile(pki.otherCa.cert, 'utf8'));
      relay.release();
      assert.equal((await c.read()).code, 220);
      await c.command('EHLO laptop.example');
      assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
      assert.equal((await c.command('RCPT TO:<someone@elsewhere.example>')).code, 554, 'not relayed: its CA is no longer trusted');
      c.destroy();
      const line = server.logs.findLast((l) => l.msg === 'TLS established' && (l.cert as { subject?: string } | null)?.subject?.includes('alice'));
      assert.equal((line?.cert as { verified?: boolean }).verified, false, JSON.stringify(line));
    } finally {
      relay.close();
    }
  });

  test('a certificate sent after such a reload, after STARTTLS', async () => {
    await replaceCaFile(await readFile(pki.ca.cert, 'utf8'));
    const relay = await holdingRelay(server.port('subx'), false);
    try {
      const c = await SmtpTestClient.connect(relay.port);
      await c.read();
      await c.command('EHLO laptop.example');
      await c.starttls(await clientTlsOptions(pki, 'alice'), async () => relay.arm());
      await replaceCaFile(await readFile(pki.otherCa.cert, 'utf8'));
      relay.release();
      assert.match((await c.command('EHLO laptop.example')).text, /^250/);
      assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
      assert.equal((await c.command('RCPT TO:<someone@elsewhere.example>')).code, 554, 'not relayed: its CA is no longer trusted');
      c.destroy();
    } finally {
      relay.close();
    }
  });
});

describe('pinned-revoked', () => {
  // A pin accepts a chain that does not verify (self-signed, foreign CA, expired), not a certificate the
  // listener's own CRL revokes: `postern pki revoke` (the documented answer to a lost laptop) must stop a device
  // whose key is also pinned (the account page pins what it issues on a listener that names no field).
  // Revoked and pinned: no identity, so no AUTH EXTERNAL, no autoLogin, `require` refuses it. A pinned
  // certificate revoked after its session logged in is refused at the next MAIL FROM, verified or not.
  let pki: TestPki;
  let server: TestServer;
  let ca = '';
  let expired: IssuedCertificate;
  let laptop: IssuedCertificate;

  const pinOf = (c: { pinBase64Url: string }): string => c.pinBase64Url;

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    // Issued by the CA, expired (so unverified, "expired"), pinned: the pin is what names its account.
    expired = await issueClientCertificate(pki.authorities.ca, { commonName: 'old', keyType: 'ecdsa', notBefore: new Date(Date.now() - 3 * 86400_000), notAfter: new Date(Date.now() - 86400_000) });
    laptop = await issueClientCertificate(pki.authorities.ca, { commonName: 'laptop', keyType: 'ecdsa', notBefore: new Date(Date.now() - 3 * 86400_000), notAfter: new Date(Date.now() - 86400_000) });
    const tls = (cc: string) => `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: ${cc}, caFiles: [${pki.ca.cert}], crlFiles: [crl.pem] }`;
    server = await startTestServer({
      files: {
        'crl.pem': await createCrl(pki.authorities.ca, [pki.clients.revoked.serial, expired.serial]),
        devices: [
          `${pinOf(pki.clients.revoked)} mallory@example.com`,
          `${pinOf(pki.clients.alice)} alice@example.com`,
          `${await pinFor(expired)} old@example.com`,
          `${await pinFor(laptop)} laptop@example.com`,
        ].join('\n') + '\n',
      },
      config: `
localDomains: [example.com]
tables: { devices: ./devices }
listeners:
  - { name: request, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('request')}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { pins: devices }, limits: { greetingDelayMs: 0 } }
  - { name: auto, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('request')}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { pins: devices, autoLogin: true }, limits: { greetingDelayMs: 0 } }
  - { name: require, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('require')}, certificateIdentity: { pins: devices }, limits: { greetingDelayMs: 0 } }
`,
      scripts: { 'mailfrom.ts': `export default (ctx) => reject(String(ctx.connection.auth?.username ?? ctx.connection.certificateIdentity ?? 'none'), { code: 550 });` },
    });
  });
  after(() => server.stop());

  async function pinFor(c: IssuedCertificate): Promise<string> {
    const { X509Certificate, createHash } = await import('node:crypto');
    return createHash('sha256').update(new X509Certificate(c.cert).publicKey.export({ type: 'spki', format: 'der' })).digest('base64url');
  }

  async function connect(listener: string, cert: { cert: string; key: string }): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(server.port(listener));
    await c.hello({ starttls: { ca, ...cert } });
    return c;
  }

  const files = async (name: 'revoked' | 'alice') => ({ cert: await readFile(pki.clients[name].cert, 'utf8'), key: await readFile(pki.clients[name].key, 'utf8') });

  test('pinned and verified (alice): EXTERNAL, autoLogin and require all accept it (the test can fail)', async () => {
    const a = await connect('request', await files('alice'));
    assert.equal((await a.command('AUTH EXTERNAL =')).code, 235);
    a.socket.destroy();
    const b = await connect('auto', await files('alice'));
    assert.equal((await b.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 alice@example.com');
    b.socket.destroy();
    const r = await connect('require', await files('alice'));
    assert.equal((await r.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 alice@example.com');
    r.socket.destroy();
  });

  for (const [name, cert] of [['revoked by the CRL', () => files('revoked')], ['expired and on the CRL', async () => expired]] as const) {
    test(`pinned but ${name}: no identity, no EXTERNAL, no autoLogin, and require refuses it`, async () => {
      const a = await connect('request', await cert());
      assert.doesNotMatch(a.transcript.join('\n'), /AUTH EXTERNAL/);
      assert.equal((await a.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
      a.socket.destroy();
      const b = await connect('auto', await cert());
      assert.equal((await b.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 none');
      b.socket.destroy();
      const r = await SmtpTestClient.connect(server.port('require'));
      await r.read();
      await r.command('EHLO x.example');
      await r.starttls({ ca, ...await cert() });
      assert.match(await r.read().then((x) => x.text, () => 'closed'), /^421 4\.7\.1 Client certificate not trusted/);
      r.socket.destroy();
    });
  }

  test('a pinned, unverified certificate revoked after its session logged in: the next MAIL FROM is refused', async () => {
    const c = await connect('auto', laptop);
    assert.equal((await c.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 laptop@example.com');
    const reloads = server.reloader.status.data.generation;
    await writeFile(join(server.dir, 'crl.pem'), await createCrl(pki.authorities.ca, [pki.clients.revoked.serial, expired.serial, laptop.serial]));
    await until('the reload of the new CRL', () => server.reloader.status.data.generation > reloads, { timeoutMs: 60_000 });
    assert.equal((await c.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 Client certificate has been revoked');
    c.socket.destroy();
  });

  test('a self-made certificate of 70 KB with a serial the CRL lists: an ordinary session without identity (its issuer is read by the DER walk, not a schema parse that gives up on it)', async () => {
    const { createSelfSignedCertificate } = await import('../../engine/certificates/index.ts');
    const huge = await createSelfSignedCertificate({ commonName: 'x', keyType: 'ecdsa', rdns: Array.from({ length: 1500 }, (_, i) => ({ OU: [`unit-${i}`.padEnd(16, '.')] })) });
    const generation = server.runtime.generation;
    await writeFile(join(server.dir, 'crl.pem'), await createCrl(pki.authorities.ca, [pki.clients.revoked.serial, expired.serial, laptop.serial, huge.serial]));
    await until('the CRL listing its serial is reloaded', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
    const c = await connect('request', huge);
    assert.equal((await c.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
    assert.equal((await c.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 none');
    c.socket.destroy();
  });

  // AUTH EXTERNAL after the handshake: the identity the handshake found, unless it was taken back since. It
  // was granted (235, an `authenticated` line, the auth script told the built-in rule accepts) with a pin
  // removed or a certificate revoked since, only the MAIL FROM after it refused.
  test('AUTH EXTERNAL on a session whose pin was removed, then whose certificate was revoked, since the handshake: refused', async () => {
    const devices = join(server.dir, 'devices');
    const pinned = await readFile(devices, 'utf8');
    const reloaded = async (what: string, write: () => Promise<void>): Promise<void> => {
      const generation = server.runtime.generation;
      await write();
      await until(what, () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
    };
    const unpinned = await connect('request', await files('alice'));
    await reloaded('the pin table without alice', () => writeFile(devices, pinned.split('\n').filter((l) => !l.endsWith(' alice@example.com')).join('\n')));
    assert.equal((await unpinned.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
    unpinned.socket.destroy();
    await reloaded('the pin table with alice again', () => writeFile(devices, pinned));
    const revoked = await connect('request', await files('alice'));
    await reloaded('a CRL revoking alice', async () => writeFile(join(server.dir, 'crl.pem'), await createCrl(pki.authorities.ca, [pki.clients.alice.serial])));
    assert.equal((await revoked.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
    revoked.socket.destroy();
  });
});

describe('revoked-intermediate', () => {
  // An intermediate CA revoked while sessions it vouched for run: `postern pki revoke` of a sub-CA (or a root CA's
  // CRL that now lists it) is picked up by the reload, new handshakes get CERT_REVOKED and name no account, and a
  // session already logged in with a certificate that intermediate issued is refused at its next MAIL FROM, as
  // one whose own certificate is revoked. The check covered only the leaf's serial, so such a session went on
  // sending as its account for as long as it stayed connected. And a pin does not name an account for a certificate
  // under a revoked intermediate: OpenSSL gives one verdict, "expired" for an expired leaf whose intermediate is
  // revoked, which a pin accepts.
  let pki: TestPki;
  let server: TestServer;
  let ca = '';
  let sub: Authority;
  let carol: IssuedCertificate;
  let dave: IssuedCertificate;
  let alice: { cert: string; key: string };

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    sub = await createCertificateAuthority({ commonName: 'Sub CA', keyType: 'ecdsa', issuer: pki.authorities.ca, years: 2 });
    carol = await issueClientCertificate(sub, { commonName: 'carol', emailAddress: 'carol@example.com', keyType: 'ecdsa' });
    dave = await issueClientCertificate(sub, { commonName: 'dave', keyType: 'ecdsa', notBefore: new Date(Date.now() - 3 * 86400_000), notAfter: new Date(Date.now() - 86400_000) });
    alice = { cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') };
    const tls = `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [cas.pem], crlFiles: [root.crl, sub.crl] }`;
    server = await startTestServer({
      files: {
        // The intermediate is in caFiles, as docs/client-certificates.md asks: Node shows a server only those.
        'cas.pem': ca + sub.cert,
        'root.crl': await createCrl(pki.authorities.ca, []),
        'sub.crl': await createCrl(sub, []),
        pins: `${createHash('sha256').update(new X509Certificate(dave.cert).publicKey.export({ type: 'spki', format: 'der' })).digest('base64url')} dave@example.com\n`,
      },
      config: `
localDomains: [example.com]
tables: { pins: ./pins }
listeners:
  - { name: auto, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, certificateIdentity: { field: emailAddress, autoLogin: true }, limits: { greetingDelayMs: 0 } }
  - { name: pinned, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, certificateIdentity: { pins: pins, autoLogin: true }, limits: { greetingDelayMs: 0 } }
  - { name: external, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { field: emailAddress }, limits: { greetingDelayMs: 0 } }
`,
      scripts: { 'mailfrom.ts': `export default (ctx) => reject(String(ctx.connection.auth?.username ?? 'none'), { code: 550 });` },
    });
  });
  after(() => server.stop());

  async function connect(listener: string, cert: { cert: string; key: string }): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(server.port(listener));
    await c.hello({ starttls: { ca, ...cert } });
    return c;
  }

  test('the root\'s CRL reloaded listing the intermediate: a session logged in through it is refused at its next MAIL FROM, others go on', async () => {
    const chain = { cert: carol.cert + sub.cert, key: carol.key };
    const auto = await connect('auto', chain);
    assert.equal((await auto.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 carol@example.com');
    const external = await connect('external', chain);
    assert.equal((await external.command('AUTH EXTERNAL =')).code, 235);
    const direct = await connect('auto', alice);
    assert.equal((await direct.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 alice@example.com');

    const generation = server.runtime.generation;
    await writeFile(join(server.dir, 'root.crl'), await createCrl(pki.authorities.ca, [sub.serial]));
    await until('the reload of the root\'s CRL', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });

    const fresh = await connect('auto', chain);
    assert.equal((await fresh.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 none', 'a new handshake names no account');
    fresh.socket.destroy();
    for (const c of [auto, external]) assert.equal((await c.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 Client certificate has been revoked');
    assert.ok(server.logs.some((l) => l.msg === 'client certificate\'s issuing CA revoked since the handshake: MAIL FROM refused' && l.user === 'carol@example.com'));
    // Issued by the root itself, which nothing revoked.
    assert.equal((await direct.command('MAIL FROM:<x@example.com>')).text, '550 5.7.1 alice@example.com');
    for (const c of [auto, external, direct]) c.socket.destroy();
  });

  test('a pinned, expired certificate whose intermediate a CRL lists names no account (OpenSSL says only "expired")', async () => {
    const chain = { cert: dave.cert + sub.cert, key: dave.key };
    const reloadCrl = async (revoked: string[]): Promise<void> => {
      const generation = server.runtime.generation;
      await writeFile(join(server.dir, 'root.crl'), await createCrl(pki.authorities.ca, revoked));
      await until('the reload of the root\'s CRL', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
    };
    const sender = async (): Promise<string> => {
      const c = await connect('pinned', chain);
      const text = (await c.command('MAIL FROM:<x@example.com>')).text;
      c.socket.destroy();
      return text;
    };
    await reloadCrl([]);
    assert.equal(await sender(), '550 5.7.1 dave@example.com', 'pinned, expired: the pin names its account (the test can fail)');
    await reloadCrl([sub.serial]);
    assert.equal(await sender(), '550 5.7.1 none');
  });
});

describe('revoked-mid-transaction', () => {
  // A session whose transaction began (MAIL FROM) before its certificate was revoked: the revocation was checked
  // only at MAIL FROM, so a stolen laptop holding a session with a MAIL FROM already answered could still name
  // recipients and relay its message (relayClientCertificates) after `postern pki revoke`. The session's next
  // command is refused: RCPT TO, and the end of DATA (before any 250: nothing is acknowledged, nothing lost).
  // Mail it sent and was answered 250 for before stays queued, to be delivered (accepted from a device trusted
  // then); `postern queue hold --certificate` finds it by the certificate's fingerprint or its key's.
  let pki: TestPki;
  let server: TestServer;
  let ca = '';

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    server = await startTestServer({
      files: { 'crl.pem': await createCrl(pki.authorities.ca, [pki.clients.revoked.serial]) },
      config: `
localDomains: [example.com]
listeners:
  - name: relay
    listen: "127.0.0.1:0"
    reverseDns: false
    relayClientCertificates: true
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}], crlFiles: [crl.pem] }
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(() => server.stop());

  async function alice(): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(server.port('relay'));
    await c.hello({ starttls: { ca, cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') } });
    return c;
  }

  async function revokeAlice(revoked: boolean): Promise<void> {
    const generation = server.runtime.generation;
    const file = join(server.dir, 'crl.pem');
    const crl = await createCrl(pki.authorities.ca, revoked ? [pki.clients.revoked.serial, pki.clients.alice.serial] : [pki.clients.revoked.serial]);
    // Padded with empty lines to the length of the CRL in force: the shorter one (alice no longer listed) was taken
    // only once unchanged for 2 s, as a file cut short is (SHRUNK_SETTLE_MS, tested in test/reload/half-written).
    const short = (await readFile(file)).length - Buffer.byteLength(crl);
    await writeFile(file, short > 0 ? crl + '\n'.repeat(short) : crl);
    await until('the reload of the new CRL', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
  }

  test('revoked after MAIL FROM: RCPT TO refused', async () => {
    const c = await alice();
    try {
      assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
      assert.equal((await c.command('RCPT TO:<first@elsewhere.example>')).code, 250, 'verified: relays (the test can fail)');
      await revokeAlice(true);
      assert.equal((await c.command('RCPT TO:<second@elsewhere.example>')).text, '550 5.7.1 Client certificate has been revoked');
    } finally {
      c.socket.destroy();
      await revokeAlice(false);
    }
  });

  test('revoked after RCPT TO: the message is refused at the end of DATA, never acknowledged', async () => {
    const c = await alice();
    try {
      assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
      assert.equal((await c.command('RCPT TO:<bob@elsewhere.example>')).code, 250);
      await revokeAlice(true);
      const data = await c.command('DATA');
      if (data.code === 354) assert.equal((await c.command('Subject: stolen\r\n\r\nhello\r\n.')).text, '550 5.7.1 Client certificate has been revoked');
      else assert.equal(data.text, '550 5.7.1 Client certificate has been revoked');
      assert.deepEqual(await server.runtime.spool.list(), [], 'nothing was spooled');
    } finally {
      c.socket.destroy();
      await revokeAlice(false);
    }
  });

  test('mail accepted before the revocation stays queued; queue hold --certificate finds it by fingerprint or pin', async () => {
    const c = await alice();
    const accepted = await c.sendMail('alice@example.com', ['bob@elsewhere.example']);
    assert.equal(accepted.code, 250);
    const id = /queued as ([0-9a-z]+)/.exec(accepted.text)![1]!;
    c.socket.destroy();
    const bystander = await SmtpTestClient.connect(server.port('relay'));
    await bystander.hello();
    assert.equal((await bystander.sendMail('carol@example.org', ['dave@example.com'])).code, 250);
    bystander.socket.destroy();
    await revokeAlice(true);
    try {
      assert.ok((await server.runtime.spool.list()).includes(id), 'still queued');
      const cert = new X509Certificate(await readFile(pki.clients.alice.cert));
      const queue = (...args: string[]) => runCli(['queue', ...args, '-c', join(server.dir, 'postern.yaml')]);
      const byFingerprint = await queue('hold', '--certificate', cert.fingerprint256);
      assert.equal(byFingerprint.stdout, `1 message placed on hold: ${id}\n`, byFingerprint.stderr);
      assert.equal((await queue('release', '--all')).code, 0);
      const pin = createHash('sha256').update(cert.publicKey.export({ type: 'spki', format: 'der' })).digest('base64url');
      assert.equal((await queue('hold', '--certificate', pin)).stdout, `1 message placed on hold: ${id}\n`);
      const wrong = await queue('hold', '--certificate', 'alice@example.com');
      assert.equal(wrong.code, 1);
      assert.match(wrong.stderr, /--certificate "alice@example\.com": not a SHA-256 fingerprint or pin/);
    } finally {
      await revokeAlice(false);
    }
  });
});

describe('revoked-renewed-ca', () => {
  // A CA renewed with the same key and name, the name encoded differently (PrintableString then UTF8String, as
  // another tool writes it): OpenSSL compares names canonically, so the certificates the first CA certificate
  // issued verify against the renewed one, and its CRL (issuer written the renewed way) revokes them at every new
  // handshake. The check of a session already open (each MAIL FROM) compared the names' DER bytes: a certificate
  // that CRL revokes kept its session.
  let pki: TestPki;
  let server: TestServer;
  let renewed: Authority;
  let device: IssuedCertificate;

  /** The same CA (key, name) in a new certificate whose name is written as UTF8String. */
  async function renewedWithUtf8Name(ca: Authority): Promise<Authority> {
    const name = new x509.Name([{ CN: [{ utf8String: 'Renewed CA' }] }]);
    const certificate = await x509.X509CertificateGenerator.create({
      serialNumber: '02', subject: name, issuer: name,
      notBefore: new Date(Date.now() - 3_600_000), notAfter: new Date(Date.now() + 365 * 86_400_000),
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' }, publicKey: ca.keys.publicKey, signingKey: ca.keys.privateKey,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(ca.keys.publicKey),
      ],
    });
    return { ...ca, certificate, cert: certificate.toString('pem') };
  }

  before(async () => {
    pki = await makeTestPki();
    const first = await createCertificateAuthority({ commonName: 'Renewed CA', keyType: 'ecdsa' });
    renewed = await renewedWithUtf8Name(first);
    assert.notDeepEqual(Buffer.from(renewed.certificate.subjectName.toArrayBuffer()), Buffer.from(first.certificate.subjectName.toArrayBuffer()));
    device = await issueClientCertificate(first, { commonName: 'device', keyType: 'ecdsa' });
    server = await startTestServer({
      files: { 'ca.pem': renewed.cert, 'crl.pem': await createCrl(renewed, []) },
      config: `
localDomains: [example.com]
listeners:
  - name: require
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: require, caFiles: [ca.pem], crlFiles: [crl.pem] }
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(() => server?.stop());

  async function connect(): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(server.port('require'));
    await c.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: device.cert, key: device.key } });
    return c;
  }

  test('a session verified by a renewed CA whose name is encoded differently: its certificate revoked since, MAIL FROM is refused', async () => {
    const open = await connect();
    // `require`: the handshake verified it against the renewed CA certificate.
    assert.match((await open.command('MAIL FROM:<device@example.com>')).text, /^250 /);
    assert.match((await open.command('RSET')).text, /^250 /);
    const generation = server.runtime.generation;
    await writeFile(join(server.dir, 'crl.pem'), await createCrl(renewed, [device.serial]));
    await until('the CRL revoking the device is reloaded', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
    // OpenSSL's view: a new handshake finds it revoked.
    const again = await SmtpTestClient.connect(server.port('require'));
    await again.read();
    await again.command('EHLO client.example');
    await again.starttls({ ca: await readFile(pki.ca.cert, 'utf8'), cert: device.cert, key: device.key });
    assert.match(await again.read().then((r) => r.text, () => 'closed'), /^421 4\.7\.1 Client certificate not trusted \(revoked\)/);
    again.socket.destroy();
    assert.equal((await open.command('MAIL FROM:<device@example.com>')).text, '550 5.7.1 Client certificate has been revoked');
    open.socket.destroy();
  });
});

describe('certificate-verdict-since', () => {
  // An open session's certificate is judged by its current verdict, not the handshake's: the verdict a TLS session
  // would carry across a resumption (which certificate listeners refuse: tls-resumption.test.ts) must not outlive its
  // reasons within one long session either. Two ways it did:
  // - a pin removed from the table (`postern pins remove`) while a session that had not logged in with it stays open:
  //   scripts kept seeing the pin's account as `certificateIdentity`, so a script relaying for pinned devices relayed;
  // - a certificate that expired since the handshake stayed "verified": relayClientCertificates relayed, AUTH EXTERNAL
  //   logged in, and the field's account stayed the session's, for as long as the client kept the connection open.
  let pki: TestPki;
  let server: TestServer;
  let ca = '';
  let device: IssuedCertificate;
  let laptop: IssuedCertificate;

  const pinOf = (pem: string): string => createHash('sha256').update(new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' })).digest('base64url');

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    device = await createSelfSignedCertificate({ commonName: 'sensor', keyType: 'ecdsa' });
    laptop = await createSelfSignedCertificate({ commonName: 'laptop', keyType: 'ecdsa' });
    const tls = `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }`;
    server = await startTestServer({
      files: { devices: `${pinOf(device.cert)} sensor@example.com\n`, laptops: `${pinOf(laptop.cert)} carol@example.com boss@example.com\n` },
      config: `
localDomains: [example.com]
tables: { devices: ./devices, laptops: ./laptops }
listeners:
  - { name: pins, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, certificateIdentity: { pins: devices }, scripts: ./scripts, limits: { greetingDelayMs: 0 } }
  - { name: field, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { field: emailAddress }, relayClientCertificates: true, limits: { greetingDelayMs: 0 } }
  - { name: senders, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, certificateIdentity: { pins: laptops, autoLogin: true }, senderLogin: { enforce: true }, limits: { greetingDelayMs: 0 } }
`,
      // As examples/postfix-policy-service: a pinned device may relay.
      scripts: { 'rcptto.ts': `export default (ctx) => ctx.builtin.accepted ? undefined : ctx.connection.certificateIdentity ? accept() : reject('Relay access denied', { code: 554, enhanced: '5.7.1' });` },
    });
  });
  after(() => server.stop());

  async function connect(listener: string, cert: { cert: string; key: string }): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(server.port(listener));
    await c.hello({ starttls: { ca, cert: cert.cert, key: cert.key } });
    return c;
  }

  /**
   * `text`, with empty lines added so that it is no shorter than `file` is now: a file cut short is taken only once
   * unchanged for 2 s (SHRUNK_SETTLE_MS, tested in test/reload/half-written.test.ts), idle time in each edit here.
   */
  async function noShorter(file: string, text: string): Promise<string> {
    const short = (await readFile(file)).length - Buffer.byteLength(text);
    return short > 0 ? text + '\n'.repeat(short) : text;
  }

  async function relay(c: SmtpTestClient): Promise<string> {
    const mail = await c.command('MAIL FROM:<sensor@example.com>');
    if (mail.code !== 250) return mail.text;
    const rcpt = await c.command('RCPT TO:<someone@elsewhere.example>');
    await c.command('RSET');
    return rcpt.text;
  }

  test('a pin removed while a session that never logged in with it is open: its scripts no longer see the account (no relay)', async () => {
    const c = await connect('pins', device);
    assert.match(await relay(c), /^250 /, 'the pinned device relays (the test can fail)');
    const devices = join(server.dir, 'devices');
    const generation = server.runtime.generation;
    await writeFile(devices, await noShorter(devices, ''));
    await until('the pin table without the device', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
    assert.match(await relay(c), /^(554|550) /, 'relayed for a pin removed since the handshake');
    c.socket.destroy();
    // A new session is refused the same way.
    const d = await connect('pins', device);
    assert.match(await relay(d), /^554 /);
    d.socket.destroy();
  });

  // A pin line is `pin account [more senders…]`: the senders are the pin's to grant, and so the table's to take back.
  test('a sender removed from the pin line of a session logged in with it: that sender is refused at the next MAIL FROM', async () => {
    const c = await connect('senders', laptop);
    assert.match((await c.command('MAIL FROM:<boss@example.com>')).text, /^250 /, 'the pin line lets carol send as boss (the test can fail)');
    await c.command('RSET');
    const generation = server.runtime.generation;
    await writeFile(join(server.dir, 'laptops'), await noShorter(join(server.dir, 'laptops'), `${pinOf(laptop.cert)} carol@example.com\n`));
    await until('the pin line without boss', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
    assert.match((await c.command('MAIL FROM:<boss@example.com>')).text, /^5\d\d /, 'sent as a sender removed from the pin line since the handshake');
    assert.match((await c.command('MAIL FROM:<carol@example.com>')).text, /^250 /, 'the account itself is still the session\'s');
    c.socket.destroy();
  });

  test('a certificate that expired since the handshake: no more relaying, no AUTH EXTERNAL, and a session logged in with it is closed', async () => {
    // Valid for a few seconds: OpenSSL verifies it at the handshake, then it expires under the open sessions.
    const notAfter = new Date(Math.ceil(Date.now() / 1000) * 1000 + 6000);
    const shortLived = await issueClientCertificate(pki.authorities.ca, { commonName: 'temp', emailAddress: 'temp@example.com', keyType: 'ecdsa', notAfter });
    const relaying = await connect('field', shortLived);
    const loggedIn = await connect('field', shortLived);
    const later = await connect('field', shortLived);
    assert.equal((await loggedIn.command('AUTH EXTERNAL =')).code, 235);
    assert.ok(Date.now() < notAfter.getTime(), 'the handshakes and login took place before the certificate expired (else the machine was too slow for this test)');
    assert.match(await relay(relaying), /^250 /, 'a verified certificate relays (the test can fail)');
    await until('the certificate expired', () => Date.now() > notAfter.getTime() + 1000, { timeoutMs: 30_000, intervalMs: 100 });
    assert.match(await relay(relaying), /^5\d\d 5\.7\.1 /, 'relayed on a certificate expired since the handshake');
    assert.equal((await later.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid', 'AUTH EXTERNAL with an expired certificate');
    assert.equal((await loggedIn.command('MAIL FROM:<temp@example.com>')).text, '421 4.7.0 Client certificate has expired, connect again');
    relaying.socket.destroy();
    loggedIn.socket.destroy();
    later.socket.destroy();
  });

  // Last: it edits the configuration. A mapping found wrong (a CN any sub-CA may write) is changed for what follows,
  // as a password reset withdraws the logins the old password opened.
  test('certificateIdentity.field changed by a reload: a session logged in with the old mapping\'s account is refused at its next MAIL FROM', async () => {
    const alice = { cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') };
    const c = await connect('field', alice);
    assert.equal((await c.command('AUTH EXTERNAL =')).code, 235);
    assert.match((await c.command('MAIL FROM:<alice@example.com>')).text, /^250 /);
    await c.command('RSET');
    const config = join(server.dir, 'postern.yaml');
    const generation = server.runtime.generation;
    await writeFile(config, await noShorter(config, (await readFile(config, 'utf8')).replace('certificateIdentity: { field: emailAddress }', 'certificateIdentity: { field: CN }')));
    await until('the configuration with field: CN', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).text, '550 5.7.1 Client certificate is no longer accepted', 'kept the account of a mapping reloaded away');
    c.socket.destroy();
  });
});
