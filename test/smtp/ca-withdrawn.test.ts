// A CA taken out of a listener's caFiles withdraws its certificates from sessions already open, as a CRL that
// revokes them does: a session verified (and logged in) by that CA gets no new transaction after the reload.
// A reload that keeps the CA (here: another CA added beside it) changes nothing for the session, also for a
// chain through an intermediate only the client sends (which Node does not show a server: its CA cannot be told).
// And a handshake that spans the reload: the server chose its CA list at the ClientHello, the client sends its
// certificate a round trip later, as late as it likes within limits.tlsHandshakeTimeoutMs. Verified against the
// old list, it was taken as verified by the new one, so it relayed and logged in. A relay on 127.0.0.1 holds the
// client's second flight (certificate, Finished) until the reload is done.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { clientTlsOptions, makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createCertificateAuthority, issueClientCertificate } from '../../engine/certificates/index.ts';
import { until } from '../helpers/wait.ts';

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
