// Dovecot-style: account from the certificate's emailAddress (CA + CRL), passwords for users without
// certificates, never an empty password. This folder's postern.yaml; carol is added to its users file.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startExample, smtpClient, hashPassword, needs, python, run, type ExampleServer } from '../../test/helpers/example.ts';
import type { ClientName } from '../../test/helpers/pki.ts';

const PASSWORD = 'correct horse battery staple';
let ex: ExampleServer;
before(async () => {
  ex = await startExample('dovecot-emailaddress', async () => ({ users: `carol@example.com:${await hashPassword(PASSWORD)}` }));
});
after(() => ex.stop());

const plain = (user: string, pw: string): string => `AUTH PLAIN ${Buffer.from(`\0${user}\0${pw}`).toString('base64')}`;
const curlExternal = async (client: ClientName) => {
  const msg = join(ex.dir, 'msg.txt');
  await writeFile(msg, 'From: alice@example.com\r\nSubject: curl\r\n\r\nhello\r\n');
  return run('curl', ['-sS', '-v', '--url', `smtp://localhost:${ex.port()}/laptop.example`, '--ssl-reqd', '--cacert', ex.pki.ca.cert,
    '--cert', ex.pki.clients[client].pem, '--login-options', 'AUTH=EXTERNAL', '--mail-from', 'alice@example.com',
    '--mail-rcpt', 'r@elsewhere.example', '--upload-file', msg]);
};

test('curl: AUTH EXTERNAL with alice\'s certificate logs in as its emailAddress and sends', needs('curl'), async () => {
  const r = await curlExternal('alice');
  assert.equal(r.code, 0, r.output);
  assert.match(r.stderr, /^< 250-AUTH EXTERNAL PLAIN LOGIN\r?$/m);
  assert.match(r.stderr, /^< 235 2\.7\.0 Authentication successful\r?$/m);
  const queued = /^< 250 2\.0\.0 Ok: queued as \w+/m.exec(r.stderr);
  assert.equal((await ex.queued(queued![0])).session.authenticatedUser, 'alice@example.com');
});

for (const [client, why] of [['revoked', 'revoked (CRL)'], ['stranger', 'alice@example.com from another CA']] as const) {
  test(`EXTERNAL with a certificate that is ${why} is refused (535 5.7.8)`, needs('curl'), async () => {
    const r = await curlExternal(client);
    // EXTERNAL is not offered: curl goes on without AUTH (or gives up, depending on its version); nothing is sent.
    assert.notEqual(r.code, 0, r.output);
    assert.doesNotMatch(r.stderr, /< 235 |queued as/);
    const c = await smtpClient(ex, { client });
    assert.match(c.ehlo.text, /^250-AUTH PLAIN LOGIN$/m);
    assert.equal((await c.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).text, '530 5.7.0 Authentication required');
    await c.quit();
  });
}

test('python smtplib: PLAIN with a password, for a user without a certificate', needs('python3'), async () => {
  const out = await python<{ login: [number, string]; data: [number, string] }>(`
import json, smtplib, ssl
s = smtplib.SMTP("localhost", ${ex.port()}, local_hostname="desktop.example")
s.starttls(context=ssl.create_default_context(cafile=${JSON.stringify(ex.pki.ca.cert)})); s.ehlo()
r = lambda reply: [reply[0], reply[1].decode()]
out = {"login": r(s.login("carol@example.com", ${JSON.stringify(PASSWORD)}))}
s.mail("carol@example.com"); s.rcpt("r@elsewhere.example")
out["data"] = r(s.data(b"Subject: smtplib\\r\\n\\r\\nhi\\r\\n"))
s.quit()
print(json.dumps(out))
`);
  assert.deepEqual(out.login, [235, '2.7.0 Authentication successful']);
  assert.equal((await ex.queued(out.data[1])).session.authenticatedUser, 'carol@example.com');
});

test('an empty password never logs in (the Dovecot EXTERNAL-passdb pitfall)', async () => {
  const c = await smtpClient(ex);
  assert.equal((await c.command(plain('alice@example.com', ''))).text, '535 5.7.8 Authentication credentials invalid');
  assert.equal((await c.command(plain('carol@example.com', ''))).text, '535 5.7.8 Authentication credentials invalid');
  await c.quit();
});

test('PLAIN as another user on a connection with alice\'s certificate is refused (535 5.7.8)', async () => {
  const c = await smtpClient(ex, { client: 'alice' });
  assert.equal((await c.command(plain('carol@example.com', PASSWORD))).text, '535 5.7.8 Authentication credentials invalid');
  assert.equal((await c.command('MAIL FROM:<carol@example.com>')).text, '530 5.7.0 Authentication required');
  await c.quit();
});
