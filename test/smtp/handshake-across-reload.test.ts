// A client certificate's handshake that spans a reload taking its CA out of caFiles: the server chose its CA
// list at the ClientHello, and the client sends its certificate a round trip later, as late as it likes within
// limits.tlsHandshakeTimeoutMs. Verified against the old list, the certificate was taken as verified by the
// new one (the session's CA list is the one in force when the handshake ended), so it relayed and logged in.
// A relay on 127.0.0.1 holds the client's second flight (certificate, Finished) until the reload is done.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { clientTlsOptions, makeTestPki, type TestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';

let pki: TestPki;
let server: TestServer;

before(async () => {
  pki = await makeTestPki();
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

async function replaceCaFile(file: string): Promise<void> {
  const generation = server.runtime.generation;
  await writeFile(join(server.dir, 'trusted.crt'), await readFile(file, 'utf8'));
  await until('the CA file is reloaded', () => server.runtime.generation !== generation, { timeoutMs: 60_000 });
}

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
  const relay = await holdingRelay(server.port('sub'), true);
  try {
    // The client's handshake ends on its side once it has sent its certificate (held by the relay).
    const c = await SmtpTestClient.connect(relay.port, { implicitTls: await clientTlsOptions(pki, 'alice') });
    await replaceCaFile(pki.otherCa.cert);
    relay.release();
    assert.equal((await c.read()).code, 220);
    await c.command('EHLO laptop.example');
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<someone@elsewhere.example>')).code, 554, 'not relayed: its CA is no longer trusted');
    c.destroy();
    const line = server.logs.find((l) => l.msg === 'TLS established' && (l.cert as { subject?: string } | null)?.subject?.includes('alice'));
    assert.equal((line?.cert as { verified?: boolean }).verified, false, JSON.stringify(line));
  } finally {
    relay.close();
  }
});

test('the same after STARTTLS', async () => {
  await replaceCaFile(pki.ca.cert);
  const relay = await holdingRelay(server.port('subx'), false);
  try {
    const c = await SmtpTestClient.connect(relay.port);
    await c.read();
    await c.command('EHLO laptop.example');
    await c.starttls(await clientTlsOptions(pki, 'alice'), async () => relay.arm());
    await replaceCaFile(pki.otherCa.cert);
    relay.release();
    assert.match((await c.command('EHLO laptop.example')).text, /^250/);
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<someone@elsewhere.example>')).code, 554, 'not relayed: its CA is no longer trusted');
    c.destroy();
  } finally {
    relay.close();
  }
});
