// request vs require, STARTTLS vs implicit TLS, and the chain verdict for each kind of certificate.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createSelfSignedCertificate } from '../../engine/certificates/index.ts';

let pki: TestPki;
let server: TestServer;
let ca: string;
const certs: Record<string, { cert: string; key: string }> = {};
const NAMES = ['alice', 'bob', 'revoked', 'expired', 'selfsigned', 'ed25519', 'ecdsa', 'stranger'] as const;

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  for (const n of NAMES) certs[n] = { cert: await readFile(pki.clients[n].cert, 'utf8'), key: await readFile(pki.clients[n].key, 'utf8') };
  const tls = (mode: string, cc: string) => `{ mode: ${mode}, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: ${cc}, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }`;
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - { name: request, listen: "127.0.0.1:0", tls: ${tls('starttls', 'request')}, relayClientCertificates: true }
  - { name: require, listen: "127.0.0.1:0", tls: ${tls('starttls', 'require')}, relayClientCertificates: true }
  - { name: implicit-require, listen: "127.0.0.1:0", tls: ${tls('implicit', 'require')}, relayClientCertificates: true }
`,
    scripts: {
      'mailfrom.ts': `export default (ctx) => { const c = ctx.connection.clientCertificate;
        if (ctx.address.localPart === 'verdict') return reject(c ? String(c.verified) + ' ' + c.verifyError : 'none', { code: 550 });
        if (ctx.address.localPart === 'cn') return reject(c ? [...c.subject.CN].map((ch) => ch.codePointAt(0).toString(16)).join(' ') : 'none', { code: 550 });
        if (ctx.address.localPart === 'names') return reject(c ? [c.subject.CN.length, c.subject.O.length, c.san.dns.length, c.san.email.length].join(' ') : 'none', { code: 550 }); };`,
    },
  });
});
after(() => server.stop());

async function verdictFor(name: typeof NAMES[number] | null): Promise<string> {
  const c = await SmtpTestClient.connect(server.port('request'));
  await c.hello({ starttls: { ca, ...(name ? certs[name] : {}) } });
  const r = await c.command('MAIL FROM:<verdict@x.example>');
  await c.quit();
  return r.text.replace(/^550 5\.7\.1 /, '');
}

test('request mode: every certificate completes the handshake; scripts see the chain verdict', async () => {
  assert.equal(await verdictFor('alice'), 'true null');
  assert.equal(await verdictFor('bob'), 'true null');
  assert.equal(await verdictFor('ed25519'), 'true null');
  assert.equal(await verdictFor('ecdsa'), 'true null');
  assert.equal(await verdictFor('revoked'), 'false revoked');
  assert.equal(await verdictFor('expired'), 'false expired');
  assert.equal(await verdictFor('selfsigned'), 'false self-signed');
  assert.equal(await verdictFor('stranger'), 'false unknown-issuer');
  assert.equal(await verdictFor(null), 'none');
});

test('request mode: only a trusted certificate relays (permit_tls_all_clientcerts)', async () => {
  for (const [name, code] of [['alice', 250], ['revoked', 554], ['selfsigned', 554], [null, 554]] as const) {
    const c = await SmtpTestClient.connect(server.port('request'));
    await c.hello({ starttls: { ca, ...(name ? certs[name] : {}) } });
    await c.command('MAIL FROM:<a@x.example>');
    assert.equal((await c.command('RCPT TO:<r@elsewhere.example>')).code, code, String(name));
    await c.quit();
  }
});

test('require mode over STARTTLS: missing or untrusted certificate gets 421 4.7.1 and the connection closes', async () => {
  for (const name of [null, 'selfsigned', 'revoked', 'expired'] as const) {
    const c = await SmtpTestClient.connect(server.port('require'));
    await c.read();
    await c.command('EHLO x.example');
    await c.starttls({ ca, ...(name ? certs[name] : {}) });
    const r = await c.read();
    assert.match(r.text, /^421 4\.7\.1 (No client certificate presented|Client certificate not trusted)/, String(name));
    assert.ok(await c.waitClosed());
  }
  const ok = await SmtpTestClient.connect(server.port('require'));
  await ok.hello({ starttls: { ca, ...certs.alice } });
  assert.equal((await ok.sendMail('a@x.example', ['r@elsewhere.example'])).code, 250);
  await ok.quit();
});

test('require mode over implicit TLS: the certificate is really requested; without one, 421 4.7.1', async () => {
  const ok = await SmtpTestClient.connect(server.port('implicit-require'), { implicitTls: { ca, ...certs.ed25519 } });
  assert.equal((await ok.read()).code, 220);
  await ok.quit();
  for (const name of [null, 'stranger'] as const) {
    const c = await SmtpTestClient.connect(server.port('implicit-require'), { implicitTls: { ca, ...(name ? certs[name] : {}) } });
    assert.match((await c.read()).text, /^421 4\.7\.1 /);
    assert.ok(await c.waitClosed());
  }
});

test('the Received header records the client certificate the way Postfix does', async () => {
  const c = await SmtpTestClient.connect(server.port('request'));
  await c.hello({ name: 'laptop.example', starttls: { ca, ...certs.selfsigned } });
  const r = await c.sendMail('a@x.example', ['bob@example.com']);
  const id = /queued as (\S+)/.exec(r.text)![1]!;
  const msg = (await server.runtime.spool.readMessage(id)).toString('utf8');
  assert.match(msg, /\r\n\t\(Client CN "eve", Issuer "eve" \(not verified\)\)\r\n/);
  assert.match(msg, /with ESMTPS id /);
  await c.quit();
});

test('a certificate with hostile names (8 KB CN, control characters, 2000 SANs): a verdict, the full names for scripts, a Received header within 998 characters per line', async () => {
  const hostile = await createSelfSignedCertificate({
    commonName: `eve\x00\r\nX-Injected: yes ${'A'.repeat(8_000)}`, organization: 'O'.repeat(4_000), keyType: 'ecdsa',
    dnsNames: Array.from({ length: 1000 }, (_, i) => `h${i}.example.com`), sanEmails: Array.from({ length: 1000 }, (_, i) => `u${i}@example.com`),
  });
  const c = await SmtpTestClient.connect(server.port('request'));
  await c.hello({ name: 'laptop.example', starttls: { ca, cert: hostile.cert, key: hostile.key } });
  assert.equal((await c.command('MAIL FROM:<verdict@x.example>')).text, '550 5.7.1 false self-signed');
  assert.equal((await c.command('MAIL FROM:<names@x.example>')).text, `550 5.7.1 ${8_000 + 22} 4000 1000 1000`);
  const r = await c.sendMail('a@x.example', ['bob@example.com']);
  assert.equal(r.code, 250, r.text);
  await c.quit();
  const msg = (await server.runtime.spool.readMessage(/queued as (\S+)/.exec(r.text)![1]!)).toString('utf8');
  const head = msg.slice(0, msg.indexOf('\r\n\r\n'));
  for (const line of head.split('\r\n')) assert.ok(line.length <= 998, `a header line of ${line.length} characters`);
  assert.match(head, /\r\n\t\(Client CN "eve\?\?\?X-Injected: yes A{42}\.\.\.", Issuer "eve\?\?\?X-Injected: yes A{42}\.\.\." \(not verified\)\)\r\n/);
  assert.ok(!/^X-Injected/m.test(head), head);
});

test('a CN with C1 controls, a bidi override, a zero-width space and a line separator: scripts see it as it is, the log line shows escapes', async () => {
  const cn = 'al\u202Eecila\u009b2J\u200b\u2028x';
  const odd = await createSelfSignedCertificate({ commonName: cn, keyType: 'ecdsa' });
  const c = await SmtpTestClient.connect(server.port('request'));
  await c.hello({ starttls: { ca, cert: odd.cert, key: odd.key } });
  assert.equal((await c.command('MAIL FROM:<cn@x.example>')).text, `550 5.7.1 ${[...cn].map((ch) => ch.codePointAt(0)!.toString(16)).join(' ')}`);
  await c.quit();
  const line = server.logs.find((l) => l.msg === 'TLS established' && String((l.cert as { subject?: string } | null)?.subject).startsWith('CN=al'));
  const subject = (line!.cert as { subject: string }).subject;
  assert.equal(subject, 'CN=al\\E2\\80\\AEecila\\C2\\9B2J\\E2\\80\\8B\\E2\\80\\A8x');
  assert.doesNotMatch(subject, /[\p{Cc}\p{Cf}\u2028\u2029]/u);
});

test('a certificate OpenSSL takes but whose fields cannot be read (a notBefore that is no time): no certificate in request mode, 421 in require mode', async () => {
  const good = await createSelfSignedCertificate({ commonName: 'mangled', keyType: 'ecdsa' });
  const der = Buffer.from(good.cert.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
  const at = der.indexOf(Buffer.from([0x17, 0x0d])); // the notBefore UTCTime, 13 characters
  der.write('AAAAAAAAAAAAZ', at + 2, 'latin1');
  const cert = `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE-----\n`;
  const c = await SmtpTestClient.connect(server.port('request'));
  await c.hello({ starttls: { ca, cert, key: good.key } });
  assert.equal((await c.command('MAIL FROM:<verdict@x.example>')).text, '550 5.7.1 none');
  assert.equal((await c.sendMail('a@x.example', ['bob@example.com'])).code, 250, 'the session goes on');
  await c.quit();
  assert.ok(server.logs.some((l) => l.msg === 'client certificate unreadable: treated as none' && /malformed/.test(String(l.reason))));
  const r = await SmtpTestClient.connect(server.port('require'));
  await r.read();
  await r.command('EHLO x.example');
  await r.starttls({ ca, cert, key: good.key });
  assert.equal((await r.read()).text, '421 4.7.1 Client certificate not trusted (unreadable)');
  assert.ok(await r.waitClosed());
});

test('strict mode aborts the handshake for an untrusted certificate; pins satisfy require without a CA verdict', async () => {
  const s = await startTestServer({
    files: { pins: `${pki.clients.selfsigned.pinBase64Url}  eve@example.com\n` },
    config: `
tables: { pins: ./pins }
listeners:
  - name: strict
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: require, strict: true, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }
  - name: pinned
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: require, strict: true, caFiles: [${pki.ca.cert}] }
    auth: { required: true }
    certificateIdentity: { pins: pins, autoLogin: true }
`,
  });
  try {
    const bad = await SmtpTestClient.connect(s.port('strict'), { implicitTls: { ca, ...certs.selfsigned } }).catch(() => null);
    if (bad) {
      await assert.rejects(bad.read(30_000), /connection closed/, 'no SMTP session for an untrusted certificate');
    }
    const good = await SmtpTestClient.connect(s.port('strict'), { implicitTls: { ca, ...certs.alice } });
    assert.equal((await good.read()).code, 220);
    await good.quit();
    const eve = await SmtpTestClient.connect(s.port('pinned'), { implicitTls: { ca, ...certs.selfsigned } });
    const ehlo = await eve.hello();
    assert.equal(ehlo.code, 250);
    const m = await eve.sendMail('eve@example.com', ['r@elsewhere.example']);
    assert.equal(m.code, 250, 'pinned key logged in without AUTH and may relay');
    await eve.quit();
    const stranger = await SmtpTestClient.connect(s.port('pinned'), { implicitTls: { ca, ...certs.stranger } }).catch(() => null);
    if (stranger) await assert.rejects(stranger.read(30_000), /connection closed/, 'strict: unpinned, untrusted → no session');
    // A CA-verified certificate that is not pinned has no identity: auth.required refuses MAIL.
    const alice = await SmtpTestClient.connect(s.port('pinned'), { implicitTls: { ca, ...certs.alice } });
    await alice.hello();
    assert.equal((await alice.command('MAIL FROM:<alice@example.com>')).text, '530 5.7.0 Authentication required');
    await alice.quit();
  } finally { await s.stop(); }
});

test('after a certificate auto-login one AUTH is still allowed; a failed or cancelled one keeps the certificate login', async () => {
  const { hashPassword } = await import('../../engine/auth/password-hash.ts');
  const s = await startTestServer({
    files: { pins: `${pki.clients.selfsigned.pinColon}  eve@example.com\n`, users: `eve@example.com:${await hashPassword('s3cret')}\n` },
    config: `
users: ./users
tables: { pins: ./pins }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request }
    auth: { mechanisms: [EXTERNAL, PLAIN], required: true }
    certificateIdentity: { pins: pins, autoLogin: true }
`,
  });
  try {
    const c = await SmtpTestClient.connect(s.port('sub'), { implicitTls: { ca, ...certs.selfsigned } });
    const ehlo = await c.hello();
    assert.match(ehlo.text, /AUTH EXTERNAL PLAIN/, 'AUTH still offered after the auto-login');
    assert.match((await c.command(`AUTH PLAIN ${Buffer.from('\0eve@example.com\0wrong').toString('base64')}`)).text, /^535 5\.7\.8 /);
    assert.equal((await c.command('AUTH PLAIN')).lines[0], '334 ');
    assert.equal((await c.command('*')).code, 501);
    assert.equal((await c.sendMail('eve@example.com', ['r@elsewhere.example'])).code, 250, 'still logged in by certificate');
    assert.equal((await c.command(`AUTH PLAIN ${Buffer.from('\0eve@example.com\0s3cret').toString('base64')}`)).text, '235 2.7.0 Authentication successful');
    assert.match((await c.command('AUTH EXTERNAL =')).text, /^503 5\.5\.1 /);
    await c.quit();
  } finally { await s.stop(); }
});
