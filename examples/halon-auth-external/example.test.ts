// Halon's AUTH EXTERNAL by SHA-1 fingerprint + MAIL FROM by fingerprint → domain, with this folder's
// postern.yaml and scripts; the test's certificates are added to tls_fingerprints as the README says.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startExample, smtpClient, needs, python, type ExampleServer } from '../../test/helpers/example.ts';

let ex: ExampleServer;
before(async () => {
  ex = await startExample('halon-auth-external', (pki) => ({
    tls_fingerprints: `${pki.clients.alice.fingerprintSha1}   example.com\n${pki.clients.ecdsa.fingerprintSha1Colon}   example.org`,
  }));
});
after(() => ex.stop());

test('python smtplib: EXTERNAL with a listed certificate logs in as its CN and may send for its domain only', needs('python3'), async () => {
  const { alice } = ex.pki.clients;
  const out = await python<Record<string, [number, string]>>(`
import json, smtplib, ssl
ctx = ssl.create_default_context(cafile=${JSON.stringify(ex.pki.ca.cert)})
ctx.load_cert_chain(${JSON.stringify(alice.cert)}, ${JSON.stringify(alice.key)})
s = smtplib.SMTP("localhost", ${ex.port()}, local_hostname="laptop.example")
s.starttls(context=ctx); s.ehlo()
r = lambda reply: [reply[0], reply[1].decode()]
out = {"auth": r(s.auth("EXTERNAL", lambda challenge=None: ""))}
out["other"] = r(s.mail("laptop@example.org"))
out["mail"] = r(s.mail("laptop@example.com"))
out["rcpt"] = r(s.rcpt("someone@elsewhere.example"))
out["data"] = r(s.data(b"Subject: halon\\r\\n\\r\\nhi\\r\\n"))
s.quit()
print(json.dumps(out))
`);
  assert.deepEqual(out.auth, [235, '2.7.0 Authentication successful']);
  assert.deepEqual(out.other, [550, '5.7.1 No valid X.509 client certificate for example.org']);
  assert.equal(out.mail![0], 250);
  assert.equal(out.rcpt![0], 250);
  assert.match(out.data![1], /^2\.0\.0 Ok: queued as \w+$/);
  assert.equal((await ex.queued(out.data![1])).session.authenticatedUser, 'alice');
  assert.ok(ex.logs.some((l) => l.msg === 'authenticated' && l.user === 'alice' && l.mechanism === 'EXTERNAL'));
});

test('a second listed certificate (colon-hex key) maps to its own domain', async () => {
  const c = await smtpClient(ex, { client: 'ecdsa' });
  assert.equal((await c.command('AUTH EXTERNAL =')).text, '235 2.7.0 Authentication successful');
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).text, '550 5.7.1 No valid X.509 client certificate for example.com');
  assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
  await c.quit();
});

test('an unlisted certificate is refused at AUTH (535 5.7.8) and cannot send', async () => {
  const c = await smtpClient(ex, { client: 'bob' });
  assert.match(c.ehlo.text, /^250-AUTH EXTERNAL$/m); // offered: the auth script decides
  assert.equal((await c.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
  assert.equal((await c.command('MAIL FROM:<bob@example.com>')).text, '530 5.7.0 Authentication required');
  await c.quit();
});

test('without a certificate EXTERNAL is not offered and refused', async () => {
  const c = await smtpClient(ex);
  assert.doesNotMatch(c.ehlo.text, /EXTERNAL/);
  assert.equal((await c.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
  await c.quit();
});
