// `postern pki issue` with each key type, and real clients using what it wrote: curl with the PKCS#12
// (--cert-type P12), openssl s_client with the PEM, Python smtplib; AUTH EXTERNAL gives the identity the
// certificate carries. `openssl pkcs12 -info` reads every .p12 without the legacy provider. Then last seen.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';
import { postern, posternJson, run, startPkiServer, type PkiServer } from './helpers.ts';
import { here, hereJson } from './in-process.ts';
import { readSightings } from '../../engine/pki/index.ts';

let pki: TestPki;
let s: PkiServer;
let passwordFile: string;
const PASSWORD = 'correct-horse-7';

before(async () => {
  pki = await makeTestPki();
  s = await startPkiServer(pki);
  passwordFile = join(s.server.dir, 'p12-password');
  await writeFile(passwordFile, `${PASSWORD}\n`);
  await writeFile(join(s.server.dir, 'msg.txt'), 'Subject: from a device\r\n\r\nhello\r\n');
});
after(() => s.server.stop());

interface Issued {
  certificate: { serial: string; identity: string; device: string; fingerprintSha256: string; notAfter: string };
  facts: { subject: string; emails: string[]; keyType: string; pin: { sha256Base64Url: string } };
  files: { cert: string; key: string; pem: string; p12: string };
  p12Password?: string;
}

/** The identity the server logged in the message's session as, from the spool. */
async function sessionUser(queueId: string): Promise<string | null> {
  return (await s.server.runtime.spool.readEnvelope(queueId)).session.authenticatedUser;
}

const queuedId = (text: string): string => /250 2\.0\.0 Ok: queued as (\w+)/.exec(text)?.[1] ?? assert.fail(`no "queued as" in:\n${text}`);

test('pki init: CA key 0600, an empty CRL the server loaded, configuration lines to paste', async () => {
  assert.equal((await stat(join(s.ca, 'ca.key'))).mode & 0o777, 0o600);
  const crl = await run('openssl', ['crl', '-in', join(s.ca, 'ca.crl'), '-noout', '-text']);
  assert.match(crl.stdout, /No Revoked Certificates/);
  assert.match(crl.stdout, /X509v3 CRL Number: \n\s+1\n/);
  // The command it prints next, run as printed (no postern.yaml names the CA yet), issues from this CA.
  const dir = await mkdtemp(join(tmpdir(), 'postern-init-then- '));
  try {
    const init = await postern(['pki', 'init', '--dir', join(dir, 'ca')]);
    assert.equal(init.code, 0, init.stderr);
    const then = /^Then: postern (pki issue .*?)\s{3}/m.exec(init.stdout)?.[1] ?? assert.fail(init.stdout);
    const words = [...then.matchAll(/'((?:[^']|'\\'')*)'|(\S+)/g)].map((m) => m[1] !== undefined ? m[1].replaceAll("'\\''", "'") : m[2]!);
    const issued = await postern([...words, '--json']);
    assert.equal(issued.code, 0, issued.stderr);
    assert.equal((JSON.parse(issued.stdout) as Issued).files.cert.startsWith(join(dir, 'ca')), true);
  } finally {
    await rm(dir, { recursive: true });
  }
  // A second init into the same folder refuses to overwrite the CA.
  const again = await here.init(s.ca); // init's function, in this process (init ran as a command above)
  assert.equal(again.code, 1);
  assert.match(again.stderr, /ca\.key: already exists/);
});

for (const key of ['ecdsa-p256', 'ed25519', 'rsa-3072'] as const) {
  test(`pki issue --key ${key}: curl (.p12), openssl s_client (PEM) and smtplib authenticate with AUTH EXTERNAL as the identity`, async () => {
    // One key type's issue as the command line; the others, and pki list, run their command's function in this process.
    const d = key === 'ecdsa-p256'
      ? await posternJson<Issued>(['pki', 'issue', 'alice@example.com', '--device', `laptop-${key}`, '--key', key, '--p12-password-file', passwordFile, '-c', s.config])
      : await hereJson<Issued>(here.issue('alice@example.com', { device: `laptop-${key}`, key, p12PasswordFile: passwordFile, config: s.config, json: true }));
    assert.equal(d.certificate.identity, 'alice@example.com');
    assert.deepEqual(d.facts.emails, ['alice@example.com']);
    assert.match(d.facts.subject, new RegExp(`^emailAddress=alice@example\\.com,CN=alice@example\\.com,OU=laptop-${key}$`));
    assert.equal(d.p12Password, undefined, 'a password from a file is not printed');
    for (const f of [d.files.key, d.files.pem, d.files.p12]) assert.equal((await stat(f)).mode & 0o777, 0o600, f);

    // OpenSSL 3 reads it without -legacy: PBES2/AES-256 and a SHA-256 MAC.
    const info = await run('openssl', ['pkcs12', '-info', '-in', d.files.p12, '-passin', `file:${passwordFile}`, '-noout']);
    assert.match(info.stderr + info.stdout, /MAC: sha256/);
    assert.match(info.stderr + info.stdout, /PBES2, PBKDF2, AES-256-CBC/);
    assert.doesNotMatch(info.stderr + info.stdout, /RC2|3DES|TripleDES/);

    const port = s.server.port('submission');
    // curl with the PKCS#12 itself.
    const curl = await run('curl', ['-sS', '-v', '--url', `smtp://localhost:${port}/laptop.example`, '--ssl-reqd', '--cacert', pki.ca.cert,
      '--cert', `${d.files.p12}:${PASSWORD}`, '--cert-type', 'P12', '--login-options', 'AUTH=EXTERNAL',
      '--mail-from', 'alice@example.com', '--mail-rcpt', 'r@example.com', '--upload-file', join(s.server.dir, 'msg.txt')]);
    assert.match(curl.stderr, /< 235 2\.7\.0 Authentication successful/);
    assert.equal(await sessionUser(queuedId(curl.stderr)), 'alice@example.com');

    // openssl s_client with the PEM (key + certificate + CA).
    const commands = 'EHLO laptop.example\r\nAUTH EXTERNAL =\r\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\nSubject: s_client\r\n\r\nhi\r\n.\r\nQUIT\r\n';
    const sc = await run('sh', ['-c', `printf '${commands.replace(/\r\n/g, '\\r\\n')}' | openssl s_client -quiet -ign_eof -starttls smtp -connect 127.0.0.1:${port} -CAfile ${pki.ca.cert} -verify_return_error -cert ${d.files.pem} -key ${d.files.pem}`]);
    assert.match(sc.stdout, /^235 2\.7\.0 Authentication successful\r?$/m);
    assert.equal(await sessionUser(queuedId(sc.stdout)), 'alice@example.com');

    // Python's smtplib with the PEM.
    const py = `
import smtplib, ssl
ctx = ssl.create_default_context(cafile=${JSON.stringify(pki.ca.cert)})
ctx.load_cert_chain(${JSON.stringify(d.files.pem)})
s = smtplib.SMTP("localhost", ${port}, local_hostname="laptop.example")
s.starttls(context=ctx); s.ehlo()
print(s.docmd("AUTH", "EXTERNAL ="))
print(s.docmd("MAIL", "FROM:<alice@example.com>"))
print(s.docmd("RCPT", "TO:<r@example.com>"))
print(s.data(b"Subject: smtplib\\r\\n\\r\\nhi\\r\\n"))
s.quit()
`;
    const out = (await run('/usr/bin/python3', ['-c', py])).stdout;
    assert.match(out, /\(235, b'2\.7\.0 Authentication successful'\)/);
    const id = /queued as (\w+)/.exec(out)?.[1];
    assert.ok(id, out);
    assert.equal(await sessionUser(id), 'alice@example.com');

    // Last seen: the server recorded the certificate (written off the connection's path, shortly after).
    await until('the sighting of the new certificate is written', async () => (await readSightings(join(s.server.dir, 'data'))).has(d.certificate.fingerprintSha256));
    const seen = (await readSightings(join(s.server.dir, 'data'))).get(d.certificate.fingerprintSha256)!;
    assert.equal(seen.listener, 'submission');
    assert.equal(seen.identity, 'alice@example.com');
    assert.equal(seen.verdict, 'verified');
    const list = await hereJson<{ certificates: Array<{ serial: string; status: string; seen: { lastSeen: string; listener: string } | null }> }>(here.list({ config: s.config, json: true }));
    const row = list.certificates.find((c) => c.serial === d.certificate.serial)!;
    assert.equal(row.status, 'valid');
    assert.equal(row.seen?.listener, 'submission');
    assert.ok(Date.parse(row.seen!.lastSeen) > Date.now() - 600_000);
  });
}

test('pki issue --legacy-p12: 3DES and a SHA-1 MAC, still read by OpenSSL 3 without -legacy; a generated password is printed once', async () => {
  const d = await posternJson<Issued>(['pki', 'issue', 'bob@example.com', '--device', 'old-phone', '--legacy-p12', '-c', s.config]);
  assert.match(d.p12Password!, /^[a-z2-9]{5}(-[a-z2-9]{5}){3}$/);
  const info = await run('openssl', ['pkcs12', '-info', '-in', d.files.p12, '-passin', `pass:${d.p12Password}`, '-noout']);
  assert.match(info.stderr + info.stdout, /MAC: sha1/);
  assert.match(info.stderr + info.stdout, /pbeWithSHA1And3-KeyTripleDES-CBC/);
  // A wrong password is refused: the file really is encrypted with that one.
  await assert.rejects(run('openssl', ['pkcs12', '-info', '-in', d.files.p12, '-passin', 'pass:wrong', '-noout']));
  // The text form prints the fingerprints and pins in Postfix's and mox's forms.
  const text = await postern(['pki', 'issue', 'bob@example.com', '--device', 'tablet', '-c', s.config]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /SHA-256 {6}([0-9A-F]{2}:){31}[0-9A-F]{2}\n/);
  assert.match(text.stdout, /MD5 {10}([0-9A-F]{2}:){15}[0-9A-F]{2}\n/);
  assert.match(text.stdout, /mox {10}[A-Za-z0-9_-]{43} /);
  assert.match(text.stdout, /submission: server localhost, port \d+, STARTTLS, authentication "TLS certificate"/);
  assert.match(text.stdout, /PKCS#12 password: [a-z2-9-]{23} {3}\(shown once\)/);
  const pem = /key \+ cert {3}(\S+)/.exec(text.stdout)![1]!;
  assert.match(await readFile(pem, 'utf8'), /-----BEGIN PRIVATE KEY-----/);
});
