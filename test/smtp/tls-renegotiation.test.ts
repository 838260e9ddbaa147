// TLS 1.2 client-initiated renegotiation is refused on every listener (STARTTLS and implicit TLS, with and
// without client certificates): each renegotiation costs the server a full handshake, on a connection that
// already holds its slot, and lets a client change its certificate under a session whose facts (identity,
// relay rights, Received comment) were taken from the first one. Node allowed three per connection.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type tls from 'node:tls';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { clientTlsOptions, makeTestPki, type TestPki } from '../helpers/pki.ts';

let pki: TestPki;
let server: TestServer;

before(async () => {
  pki = await makeTestPki();
  const tlsFiles = `cert: ${pki.server.cert}, key: ${pki.server.key}`;
  server = await startTestServer({
    config: `
listeners:
  - name: plain
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, ${tlsFiles} }
    limits: { greetingDelayMs: 0 }
  - name: certs
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, ${tlsFiles}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
    limits: { greetingDelayMs: 0 }
  - name: implicit
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: implicit, ${tlsFiles}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(() => server.stop());

/** Ask the server for a renegotiation; resolves with the error it ended in, or null when it was done. */
function renegotiate(socket: tls.TLSSocket): Promise<Error | null> {
  return new Promise((resolve) => {
    const failed = (err: Error): void => resolve(err);
    socket.once('error', failed);
    const asked = socket.renegotiate({ rejectUnauthorized: false }, (err) => {
      socket.off('error', failed);
      resolve(err ?? null);
    });
    if (!asked) resolve(new Error('renegotiation could not be started'));
  });
}

for (const name of ['plain', 'certs', 'implicit']) {
  test(`${name}: a client-initiated TLS 1.2 renegotiation is refused`, async () => {
    const alice = await clientTlsOptions(pki, 'alice');
    const opts = { ...alice, maxVersion: 'TLSv1.2' as const };
    const c = name === 'implicit'
      ? await SmtpTestClient.connect(server.port(name), { implicitTls: opts })
      : await SmtpTestClient.connect(server.port(name));
    if (name === 'implicit') {
      assert.equal((await c.read(30_000)).code, 220);
      await c.command('EHLO client.example');
    } else {
      await c.hello({ starttls: opts });
    }
    const socket = c.socket as tls.TLSSocket;
    assert.equal(socket.getProtocol(), 'TLSv1.2');
    const err = await renegotiate(socket);
    assert.ok(err, 'the renegotiation must fail');
    assert.match(err.message, /no renegotiation|renegotiat/i);
    c.destroy();
  });
}
