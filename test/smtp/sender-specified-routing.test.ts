// The built-in relay rule takes a recipient in a local domain as local only when its local part routes
// nowhere else: `victim%elsewhere@local`, `elsewhere!victim@local` and `"victim@elsewhere"@local` would be
// relayed on to `elsewhere` by a next hop that still honours the percent hack or bang paths (sendmail,
// Exchange, old Postfix with allow_percent_hack), making Postern the open door of an open relay. Refused
// with "Relay access denied" as Postfix's reject_unauth_destination does; a client that may relay anyway
// (logged in, or a relay certificate) may still use them. With swaks, a real client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const run = promisify(execFile);
let pki: TestPki;
let server: TestServer;

const swaksFound = spawnSync('sh', ['-c', 'command -v swaks']).status === 0;
const needsSwaks = { skip: swaksFound || process.env.POSTERN_REQUIRE_CLIENTS ? false : 'swaks not installed' };

before(async () => {
  pki = await makeTestPki();
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
    relayClientCertificates: true
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(() => server.stop());

/** swaks up to RCPT TO for `to`: its exit status (0 accepted, 24 RCPT refused) and the transcript. */
async function swaksRcpt(to: string, extra: string[] = []): Promise<{ code: number; out: string }> {
  const args = ['--server', '127.0.0.1', '--port', String(server.port('mx')), '--ehlo', 'client.example',
    '--from', 'sender@elsewhere.example', '--to', to, '--quit-after', 'RCPT', ...extra];
  return run('swaks', args).then((r) => ({ code: 0, out: r.stdout }), (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }));
}

for (const routed of ['victim%elsewhere.example@example.com', 'elsewhere.example!victim@example.com', 'victim%elsewhere.example@EXAMPLE.com']) {
  test(`swaks: RCPT TO:<${routed}> (sender-specified routing in a local domain) is not local: 554 Relay access denied`, needsSwaks, async () => {
    const r = await swaksRcpt(routed);
    assert.equal(r.code, 24, `swaks exit 24 (RCPT refused):\n${r.out}`);
    assert.match(r.out, /<~?\*+ +554 5\.7\.1 <[^>]+>: Relay access denied/);
  });
}

test('swaks: a plain local recipient is still accepted; a relay certificate may use a routed one', needsSwaks, async () => {
  const plain = await swaksRcpt('victim@example.com');
  assert.equal(plain.code, 0, plain.out);
  const withCert = await swaksRcpt('victim%elsewhere.example@example.com', ['--tls', '--tls-cert', pki.clients.alice.cert, '--tls-key', pki.clients.alice.key]);
  assert.equal(withCert.code, 0, withCert.out);
});

test('a quoted local part naming another domain is refused too (a raw client: swaks quotes nothing)', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<sender@elsewhere.example>')).code, 250);
  const quoted = await c.command('RCPT TO:<"victim%elsewhere.example"@example.com>');
  assert.match(quoted.text, /^554 5\.7\.1 .*Relay access denied/, 'not local');
  assert.equal((await c.command('RCPT TO:<victim@example.com>')).code, 250);
  await c.quit();
});
