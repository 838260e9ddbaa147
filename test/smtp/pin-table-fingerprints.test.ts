// A pin table written the way Postfix tables are: relay_clientcerts lines hold certificate fingerprints,
// in md5 below compatibility_level 3.6 or sha256 (`openssl x509 -fingerprint -sha256`). Neither is a pin (the
// SHA-256 of the public key), so neither names an account; the migration must not fail without a word.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { needs, run } from '../helpers/example.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';

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
