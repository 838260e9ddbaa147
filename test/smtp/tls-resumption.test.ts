// Listeners that ask for client certificates never resume TLS sessions: a resumed session would carry
// the first handshake's certificate verdict past a CRL update, and its certificate to whoever offers the session
// (a second client with no certificate of its own). Listeners that don't ask still may. STARTTLS and implicit TLS
// build their TLS sockets apart (smtp-server's upgrade, Node's tls.Server): both are checked.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import type tls from 'node:tls';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, type TlsClientOptions } from '../helpers/smtp-client.ts';
import { clientTlsOptions, makeTestPki, type TestPki } from '../helpers/pki.ts';

let pki: TestPki;
let client: TlsClientOptions;

before(async () => {
  pki = await makeTestPki();
  client = await clientTlsOptions(pki, 'alice');
});

function listener(name: string, clientCertificates: string, mode = 'starttls'): string {
  return `
  - name: ${name}
    listen: 127.0.0.1:0
    tls: { mode: ${mode}, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: ${clientCertificates}, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }
    limits: { greetingDelayMs: 0 }`;
}

/** STARTTLS once, keep the session the server offered (if any), then STARTTLS again offering it. */
async function resumed(port: number, maxVersion: tls.SecureVersion): Promise<{ offered: boolean; reused: boolean }> {
  const first = await SmtpTestClient.connect(port);
  await first.hello({ starttls: { ...client, maxVersion } });
  await first.command('NOOP'); // TLS 1.3 tickets arrive after the handshake
  const session = (first.socket as tls.TLSSocket).getSession();
  await first.quit();
  if (!session) return { offered: false, reused: false };
  const second = await SmtpTestClient.connect(port);
  await second.hello({ starttls: { ...client, maxVersion, session } });
  const reused = (second.socket as tls.TLSSocket).isSessionReused();
  await second.quit();
  return { offered: true, reused };
}

test('no TLS session resumption where client certificates are asked for (TLS 1.2 and 1.3)', async () => {
  const s = await startTestServer({ config: `listeners:${listener('certs', 'request')}${listener('plain', 'none')}` });
  try {
    for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
      assert.equal((await resumed(s.port('certs'), version)).reused, false, `${version}: a certificate listener resumed a session`);
      // The same client does resume where no certificate is asked for: the check above can fail.
      assert.deepEqual(await resumed(s.port('plain'), version), { offered: true, reused: true }, `${version}: plain listener`);
    }
  } finally {
    await s.stop();
  }
});

/** Implicit TLS on `server`: alice's session, then a client without a certificate offering it. */
async function resumedImplicit(server: TestServer, port: number, maxVersion: tls.SecureVersion): Promise<{ offered: boolean; reused: boolean; sawCertificate: boolean }> {
  const first = await SmtpTestClient.connect(port, { implicitTls: { ...client, maxVersion } });
  await first.read();
  await first.command('NOOP'); // TLS 1.3 tickets arrive after the handshake
  const session = (first.socket as tls.TLSSocket).getSession();
  await first.quit();
  if (!session) return { offered: false, reused: false, sawCertificate: false };
  const second = await SmtpTestClient.connect(port, { implicitTls: { ca: client.ca, maxVersion, session } });
  await second.read();
  const reused = (second.socket as tls.TLSSocket).isSessionReused();
  // The facts the server took: the Received header would say "Client CN" had it taken alice's certificate.
  await second.command('EHLO second.example');
  const r = await second.sendMail('a@example.org', ['b@example.com']);
  await second.quit();
  const id = /queued as (\S+)/.exec(r.text)?.[1];
  const message = id ? (await server.runtime.spool.readMessage(id)).toString('utf8') : '';
  return { offered: true, reused, sawCertificate: message.includes('Client CN') };
}

test('implicit TLS: no resumption where client certificates are asked for, so no certificate passes to a client without one', async () => {
  const server = await startTestServer({ config: `localDomains: [example.com]\nlisteners:${listener('certs', 'request', 'implicit')}${listener('plain', 'none', 'implicit')}` });
  try {
    for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
      assert.deepEqual(await resumedImplicit(server, server.port('certs'), version), { offered: true, reused: false, sawCertificate: false }, `${version}: certificate listener`);
      assert.deepEqual(await resumedImplicit(server, server.port('plain'), version), { offered: true, reused: true, sawCertificate: false }, `${version}: plain listener`);
    }
  } finally {
    await server.stop();
  }
});
