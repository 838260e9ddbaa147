// mox-style device pins over implicit TLS, with this folder's postern.yaml; the test device's pin
// (base64url, as mox prints it) is added to device_keys.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startExample, smtpClient, needs, python, run, type ExampleServer } from '../../test/helpers/example.ts';

let ex: ExampleServer;
before(async () => {
  ex = await startExample('mox-pins', (pki) => ({ device_keys: `${pki.clients.selfsigned.pinBase64Url}   mjl@mox.example` }));
});
after(() => ex.stop());

test('python smtplib: a pinned self-signed ed25519 device sends without AUTH', needs('python3'), async () => {
  const { selfsigned } = ex.pki.clients;
  const out = await python<{ ehlo: string; data: [number, string] }>(`
import json, smtplib, ssl
ctx = ssl.create_default_context(cafile=${JSON.stringify(ex.pki.ca.cert)})
ctx.load_cert_chain(${JSON.stringify(selfsigned.cert)}, ${JSON.stringify(selfsigned.key)})
s = smtplib.SMTP_SSL("localhost", ${ex.port()}, local_hostname="laptop.example", context=ctx)
out = {"ehlo": s.ehlo()[1].decode()}
s.mail("mjl@mox.example"); s.rcpt("r@elsewhere.example")
reply = s.data(b"Subject: pinned\\r\\n\\r\\nhi\\r\\n")
out["data"] = [reply[0], reply[1].decode()]
s.quit()
print(json.dumps(out))
`);
  assert.match(out.ehlo, /^AUTH EXTERNAL PLAIN$/m);
  assert.equal(out.data[0], 250);
  const envelope = await ex.queued(out.data[1]);
  assert.equal(envelope.session.authenticatedUser, 'mjl@mox.example');
  assert.equal(envelope.session.clientCertificate?.verified, false, 'no CA: the pin alone is the trust');
});

test('curl: AUTH EXTERNAL with the pinned device works too', needs('curl'), async () => {
  const msg = join(ex.dir, 'msg.txt');
  await writeFile(msg, 'Subject: curl\r\n\r\nhello\r\n');
  const r = await run('curl', ['-sS', '-v', '--url', `smtps://localhost:${ex.port()}/laptop.example`, '--cacert', ex.pki.ca.cert,
    '--cert', ex.pki.clients.selfsigned.pem, '--login-options', 'AUTH=EXTERNAL', '--sasl-ir',
    '--mail-from', 'mjl@mox.example', '--mail-rcpt', 'r@elsewhere.example', '--upload-file', msg]);
  assert.equal(r.code, 0, r.output);
  assert.match(r.stderr, /^< 235 2\.7\.0 Authentication successful\r?$/m);
  const queued = /^< 250 2\.0\.0 Ok: queued as \w+/m.exec(r.stderr);
  assert.equal((await ex.queued(queued![0])).session.authenticatedUser, 'mjl@mox.example');
});

test('an unknown key (even from a real CA) or no certificate gets 530 5.7.0 at MAIL FROM', async () => {
  for (const client of ['ed25519', 'bob', undefined] as const) {
    const c = await smtpClient(ex, { client });
    assert.match(c.ehlo.text, /^250-AUTH PLAIN$/m, String(client));
    assert.equal((await c.command('MAIL FROM:<mjl@mox.example>')).text, '530 5.7.0 Authentication required', String(client));
    if (client) assert.equal((await c.command('AUTH EXTERNAL =')).text, '535 5.7.8 Authentication credentials invalid');
    await c.quit();
  }
});
