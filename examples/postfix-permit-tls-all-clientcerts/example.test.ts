// Postfix permit_tls_all_clientcerts (+ password AUTH), with this folder's postern.yaml, driven by swaks.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startExample, smtpClient, hashPassword, needs, run, type ExampleServer } from '../../test/helpers/example.ts';
import type { ClientName } from '../../test/helpers/pki.ts';

const PASSWORD = 'correct horse battery staple';
let ex: ExampleServer;
before(async () => {
  ex = await startExample('postfix-permit-tls-all-clientcerts', async () => ({ users: `carol@example.com:${await hashPassword(PASSWORD)}` }));
});
after(() => ex.stop());

const swaks = (...args: string[]) => run('swaks', ['--server', '127.0.0.1', '--port', String(ex.port()), '--tls', '--tls-ca-path', ex.pki.ca.cert,
  '--ehlo', 'laptop.example', '--from', 'alice@example.com', '--to', 'r@elsewhere.example', '--header', 'Subject: swaks', ...args]);
const withCert = (name: ClientName) => ['--tls-cert', ex.pki.clients[name].cert, '--tls-key', ex.pki.clients[name].key];

test('swaks: a certificate from our CA relays to a foreign domain without AUTH', needs('swaks'), async () => {
  const r = await swaks(...withCert('alice'));
  assert.equal(r.code, 0, r.output);
  const queued = /<~  250 2\.0\.0 Ok: queued as \w+/.exec(r.stdout);
  assert.ok(queued, r.output);
  const envelope = await ex.queued(queued[0]);
  assert.deepEqual(envelope.recipients.map((x) => x.address), ['r@elsewhere.example']);
  assert.equal(envelope.session.authenticatedUser, null);
  assert.equal(envelope.session.clientCertificate?.verified, true);
});

const refused: Array<[string, ClientName | null, string | null]> = [['a revoked certificate', 'revoked', 'revoked'],
  ['a self-signed certificate', 'selfsigned', 'self-signed'], ['a certificate from another CA', 'stranger', 'unknown-issuer'], ['no certificate', null, null]];
for (const [what, client, why] of refused) {
  test(`swaks: ${what} may not relay (554 5.7.1)`, needs('swaks'), async () => {
    const r = await swaks(...client ? withCert(client) : []);
    assert.equal(r.code, 24, `swaks exit 24 (RCPT refused)\n${r.output}`);
    assert.match(r.stdout, /<~\* 554 5\.7\.1 <r@elsewhere\.example>: Relay access denied/);
    const tls = ex.logs.findLast((l) => l.msg === 'TLS established') as { cert: { verified: boolean; error: string } | null };
    assert.deepEqual(tls.cert && [tls.cert.verified, tls.cert.error], client && [false, why]);
  });
}

test('swaks: PLAIN with a password from the users file relays', needs('swaks'), async () => {
  const r = await swaks('--auth', 'PLAIN', '--auth-user', 'carol@example.com', '--auth-password', PASSWORD);
  assert.equal(r.code, 0, r.output);
  assert.match(r.stdout, /<~  235 2\.7\.0 Authentication successful/);
  const queued = /<~  250 2\.0\.0 Ok: queued as \w+/.exec(r.stdout);
  assert.equal((await ex.queued(queued![0])).session.authenticatedUser, 'carol@example.com');
});

test('PLAIN with an empty or a wrong password is refused (535 5.7.8); MAIL before STARTTLS gets 530', async () => {
  const c = await smtpClient(ex);
  const plain = (user: string, pw: string) => `AUTH PLAIN ${Buffer.from(`\0${user}\0${pw}`).toString('base64')}`;
  assert.equal((await c.command(plain('carol@example.com', ''))).text, '535 5.7.8 Authentication credentials invalid');
  assert.equal((await c.command(plain('carol@example.com', 'wrong'))).text, '535 5.7.8 Authentication credentials invalid');
  assert.equal((await c.command('MAIL FROM:<carol@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<r@elsewhere.example>')).text, '554 5.7.1 <r@elsewhere.example>: Relay access denied');
  assert.equal((await c.command('RCPT TO:<postmaster@example.com>')).code, 250, 'local domain without relay permission');
  await c.quit();
  const plaintext = await smtpClient(ex, { tls: false });
  assert.equal((await plaintext.command('MAIL FROM:<carol@example.com>')).text, '530 5.7.0 Must issue a STARTTLS command first');
  await plaintext.quit();
});
