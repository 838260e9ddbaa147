// mox-style device pins over implicit TLS, with this folder's postern.yaml; the test device's pin
// (base64url, as mox prints it) is added to device_keys.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startExample, smtpClient, needs, python, run, hashPassword, type ExampleServer } from '../../test/helpers/example.ts';

const ALICE_PASSWORD = 'alice-Secret-1';
let ex: ExampleServer;
before(async () => {
  ex = await startExample('mox-pins', async (pki) => ({
    // The device may also send as its own alias, named after the account on its pin line.
    device_keys: `${pki.clients.selfsigned.pinBase64Url}   mjl@mox.example   mjl-laptop@mox.example`,
    users: `alice@mox.example:${await hashPassword(ALICE_PASSWORD)}`,
    sender_logins: 'alice@mox.example   sales@mox.example, @alice.example',
  }));
});

/** Python smtplib over implicit TLS (the pinned device's certificate, or a PLAIN login): the reply to each MAIL FROM. */
async function mailFromReplies(login: 'device' | 'alice', senders: string[]): Promise<Array<[number, string]>> {
  const { selfsigned } = ex.pki.clients;
  return python<Array<[number, string]>>(`
import json, smtplib, ssl
ctx = ssl.create_default_context(cafile=${JSON.stringify(ex.pki.ca.cert)})
if ${JSON.stringify(login)} == "device": ctx.load_cert_chain(${JSON.stringify(selfsigned.cert)}, ${JSON.stringify(selfsigned.key)})
s = smtplib.SMTP_SSL("localhost", ${ex.port()}, local_hostname="laptop.example", context=ctx)
s.ehlo()
if ${JSON.stringify(login)} == "alice": s.login("alice@mox.example", ${JSON.stringify(ALICE_PASSWORD)})
out = []
for sender in ${JSON.stringify(senders)}:
    code, text = s.mail(sender)
    out.append([code, text.decode()])
    s.rset()
s.quit()
print(json.dumps(out))
`);
}

test('python smtplib: the pinned device may not send as another address (553 5.7.1); its own, its account\'s and its pin line\'s are fine', needs('python3'), async () => {
  const replies = await mailFromReplies('device', ['ceo@bank.example', 'MJL@mox.example', 'postmaster@mox.example', 'mjl-laptop@mox.example', '', 'alice@mox.example']);
  assert.deepEqual(replies, [
    [553, '5.7.1 <ceo@bank.example>: Sender address rejected: not owned by user mjl@mox.example'],
    [250, '2.1.0 Accepted'],
    [250, '2.1.0 Accepted'],
    [250, '2.1.0 Accepted'],
    [553, '5.7.1 <>: Sender address rejected: null sender not allowed for user mjl@mox.example'],
    [553, '5.7.1 <alice@mox.example>: Sender address rejected: not owned by user mjl@mox.example'],
  ]);
  // Each refusal has its log line (decision-log.ts) with the reason.
  const refused = ex.logs.filter((l) => l.decision === 'reject' && l.stage === 'MAIL').map((l) => [l.from, l.reason]);
  assert.deepEqual(refused.slice(-3), [['ceo@bank.example', 'senderLogin: sender-login-mismatch'], ['', 'senderLogin: null-sender'], ['alice@mox.example', 'senderLogin: sender-login-mismatch']]);
});

test('python smtplib: a password user may send as itself and the senders sender_logins lists, nothing else', needs('python3'), async () => {
  const replies = await mailFromReplies('alice', ['ceo@bank.example', 'alice@mox.example', 'sales@mox.example', 'anyone@alice.example', 'mjl@mox.example']);
  assert.deepEqual(replies.map(([code]) => code), [553, 250, 250, 250, 553]);
  assert.equal(replies[0]![1], '5.7.1 <ceo@bank.example>: Sender address rejected: not owned by user alice@mox.example');
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
reply = s.data(b"From: mjl@mox.example\\r\\nSubject: pinned\\r\\n\\r\\nhi\\r\\n")
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
  await writeFile(msg, 'From: mjl@mox.example\r\nSubject: curl\r\n\r\nhello\r\n');
  const r = await run('curl', ['-sS', '-v', '--url', `smtps://localhost:${ex.port()}/laptop.example`, '--cacert', ex.pki.ca.cert,
    '--cert', ex.pki.clients.selfsigned.pem, '--login-options', 'AUTH=EXTERNAL', '--sasl-ir',
    '--mail-from', 'mjl@mox.example', '--mail-rcpt', 'r@elsewhere.example', '--upload-file', msg]);
  assert.equal(r.code, 0, r.output);
  assert.match(r.stderr, /^< 235 2\.7\.0 Authentication successful\r?$/m);
  const queued = /^< 250 2\.0\.0 Ok: queued as \w+/m.exec(r.stderr);
  assert.equal((await ex.queued(queued![0])).session.authenticatedUser, 'mjl@mox.example');
});

test("README.md's curl command, as written, is queued (the message it sends passes senderLogin.headerFrom)", needs('curl'), async () => {
  const readme = await readFile(new URL('README.md', import.meta.url), 'utf8');
  const shown = /^printf .*\| curl [^]*?-T -$/m.exec(readme)?.[0];
  assert.ok(shown, 'the README\'s printf | curl command');
  const command = shown.replace(/\\\n\s*/g, '').replace('localhost:2465', `localhost:${ex.port()}`)
    .replace('data/pki/ca.crt', ex.pki.ca.cert).replace('/tmp/mox/device.pem', ex.pki.clients.selfsigned.pem);
  const r = await run('sh', ['-c', command]);
  assert.equal(r.code, 0, r.output);
  assert.match(r.stderr, /^< 250 2\.0\.0 Ok: queued as \w+/m);
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

test('openssl renews the device\'s certificate with the same key (new serial, new dates, new name): the pin still logs it in', needs('python3'), async () => {
  // What mox pins is the key, not the certificate: a device that renews its self-signed certificate keeps its account.
  const { selfsigned } = ex.pki.clients;
  const renewed = join(ex.dir, 'renewed.crt');
  const r = await run('openssl', ['req', '-x509', '-new', '-key', selfsigned.key, '-subj', '/CN=eve renewed', '-days', '3650', '-set_serial', '4242', '-out', renewed]);
  assert.equal(r.code, 0, r.output);
  const fingerprint = await run('openssl', ['x509', '-in', renewed, '-noout', '-fingerprint', '-sha256']);
  assert.ok(!fingerprint.stdout.includes(selfsigned.fingerprintSha256Colon), 'another certificate');
  const replies = await python<Array<[number, string]>>(`
import json, smtplib, ssl
ctx = ssl.create_default_context(cafile=${JSON.stringify(ex.pki.ca.cert)})
ctx.load_cert_chain(${JSON.stringify(renewed)}, ${JSON.stringify(selfsigned.key)})
s = smtplib.SMTP_SSL("localhost", ${ex.port()}, local_hostname="laptop.example", context=ctx)
s.ehlo()
code, text = s.mail("mjl@mox.example")
s.quit()
print(json.dumps([[code, text.decode()]]))
`);
  assert.deepEqual(replies.map(([code]) => code), [250]);
});
