// This folder's postern.yaml and script behind a real, private Postfix (the main.cf lines of this folder,
// on loopback), driven by swaks: a listed certificate and a pinned key relay, an unlisted certificate and
// none get the script's 554 from Postfix, and the fingerprint Postfix sent is openssl's SHA-256. The data
// script's header reaches the relayed message (Postfix's PREPEND).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startExample, needs, run, type ExampleServer } from '../../test/helpers/example.ts';
import type { ClientName } from '../../test/helpers/pki.ts';
import { freePort, needsPostfix, startPostfix, startSmtpSink, type PostfixInstance, type SmtpSink } from '../../test/helpers/postfix.ts';

const skip = needsPostfix().skip || needs('swaks', 'openssl').skip;
let ex: ExampleServer;
let pf: PostfixInstance;
let sink: SmtpSink;
let smtpdPort: number;
let files: string;

before(async () => {
  if (skip) return;
  ex = await startExample('postfix-policy-service', (pki) => ({
    relay_certs: `${pki.clients.alice.fingerprintSha256Colon}  alice-laptop`,
    device_pins: `${pki.clients.selfsigned.pinColon}  eve@example.net`,
  }), (doc) => doc.setIn(['policyServices', 0, 'listen'], '127.0.0.1:0'));
  const policyPort = ex.running.policyAddresses.get('postfix')!.split(':').pop()!;
  sink = await startSmtpSink();
  files = await mkdtemp(join(tmpdir(), 'postern-pf-files-'));
  await chmod(files, 0o755);
  await writeFile(join(files, 'server.pem'), (await readFile(ex.pki.server.key, 'utf8')) + (await readFile(ex.pki.server.cert, 'utf8')), { mode: 0o644 });
  // The folder's main.cf lines, with this machine's paths and ports.
  const main: Record<string, string> = {};
  for (const line of (await readFile(new URL('./main.cf', import.meta.url), 'utf8')).split('\n')) {
    const m = /^(\w+)\s*=\s*(.*)$/.exec(line);
    if (m) main[m[1]!] = m[2]!.replace('/etc/postfix/server.pem', join(files, 'server.pem'))
      .replace('/etc/postfix/client-ca.pem', ex.pki.ca.cert).replace('127.0.0.1:10040', `127.0.0.1:${policyPort}`);
  }
  smtpdPort = await freePort();
  pf = await startPostfix('policy', { ...main, relayhost: `[127.0.0.1]:${sink.port}`, smtp_tls_security_level: 'none', relay_domains: 'example.net',
    // The clients (127.0.0.1) are not in mynetworks, as devices are not: permit_mynetworks must not decide.
    mynetworks: '192.0.2.1/32' },
    [`127.0.0.1:${smtpdPort} inet n - n - - smtpd`]);
});
after(async () => {
  await pf?.stop();
  await sink?.stop();
  await ex?.stop();
  if (files) await rm(files, { recursive: true, force: true });
});

const swaks = (client: ClientName | null, to: string) => run('swaks', ['--server', '127.0.0.1', '--port', String(smtpdPort), '--tls',
  '--ehlo', 'laptop.example', '--from', 'someone@example.net', '--to', to, '--header', `Subject: policy ${client ?? 'none'} ${to}`,
  ...client ? ['--tls-cert', ex.pki.clients[client].cert, '--tls-key', ex.pki.clients[client].key] : []]);

test("docs/postfix-policy.md's main.cf lines are this folder's (which these tests run)", async () => {
  const doc = await readFile(new URL('../../docs/postfix-policy.md', import.meta.url), 'utf8');
  const shown = /```\n# main\.cf\n([^]*?)```/.exec(doc)?.[1];
  assert.ok(shown, 'the main.cf block of docs/postfix-policy.md');
  const lines = (text: string) => new Map([...text.matchAll(/^(\w+)\s*=[ \t]*(.*)$/gm)].map((m) => [m[1]!, m[2]!.trim()]));
  const ours = lines(await readFile(new URL('./main.cf', import.meta.url), 'utf8'));
  const page = lines(shown);
  for (const [key, value] of page) assert.equal(ours.get(key), value, `main.cf: ${key}`);
  // And the page leaves out none that the relay needs (smtpd_relay_restrictions's default defers a device before the
  // policy service is asked); left to the reader: the server's own TLS files, and the DATA check shown under PREPEND.
  const yours = new Set(['smtpd_tls_security_level', 'smtpd_tls_chain_files', 'smtpd_tls_CAfile', 'smtpd_data_restrictions']);
  assert.deepEqual([...ours.keys()].filter((k) => !yours.has(k) && !page.has(k)), []);
});

test('a certificate listed by its SHA-256 fingerprint relays through Postfix', { skip }, async () => {
  const r = await swaks('alice', 'friend@elsewhere.example');
  assert.equal(r.code, 0, r.output);
  const message = await sink.waitFor(/Subject: policy alice friend@elsewhere\.example/);
  assert.match(message, /\nX-Relay-Certificate: alice-laptop\nReceived: from laptop\.example/, 'the label from relay_certs, prepended by Postfix');
});

test('the fingerprint Postfix sent is openssl\'s SHA-256 of the certificate; Postfix verified it', { skip }, async () => {
  const openssl = await run('openssl', ['x509', '-in', ex.pki.clients.alice.cert, '-noout', '-fingerprint', '-sha256']);
  const fingerprint = openssl.stdout.trim().split('=')[1]!;
  assert.match(fingerprint, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  const line = ex.logs.find((l) => String(l.msg).startsWith(`ccert_fingerprint=${fingerprint} `));
  assert.ok(line, `no script log line with ${fingerprint}`);
  assert.match(String(line.msg), /verified=true identity=$/);
});

test('a pinned public key relays, whatever its chain (self-signed here)', { skip }, async () => {
  const r = await swaks('selfsigned', 'other@elsewhere.example');
  assert.equal(r.code, 0, r.output);
  const message = await sink.waitFor(/Subject: policy selfsigned other@elsewhere\.example/);
  assert.match(message, /\nX-Relay-Certificate: eve@example\.net\n/, 'the pinned device\'s account');
  assert.ok(ex.logs.some((l) => /verified=false identity=eve@example\.net$/.test(String(l.msg))));
});

for (const client of ['stranger', null] as const) {
  test(`${client ? 'an unlisted certificate (another CA)' : 'no certificate'}: the script's 554 comes from Postfix`, { skip }, async () => {
    const r = await swaks(client, 'x@elsewhere.example');
    assert.equal(r.code, 24, `swaks exit 24 (RCPT refused)\n${r.output}`);
    assert.match(r.stdout, /<~\* 554 5\.7\.1 <x@elsewhere\.example>: Recipient address rejected: Relay access denied: client certificate not listed/);
  });
}

test('an unverified certificate: Postfix sends its fingerprint without subject and issuer', { skip }, () => {
  const line = ex.logs.findLast((l) => /^ccert_fingerprint=[0-9A-F:]{95} verified=false/.test(String(l.msg)));
  assert.ok(line, 'the stranger\'s request carried a fingerprint and was not verified');
});

test('the local domain gets no verdict (DUNNO): Postfix\'s own rules take it, without a certificate', { skip }, async () => {
  const r = await swaks(null, 'postmaster@example.net');
  assert.equal(r.code, 0, r.output);
  const message = await sink.waitFor(/Subject: policy none postmaster@example\.net/);
  assert.doesNotMatch(message, /X-Relay-Certificate/, 'no certificate: no header (DUNNO at DATA)');
});
