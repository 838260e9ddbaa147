// AUTH EXTERNAL (RFC 4422 appendix A, RFC 4954) on STARTTLS and implicit TLS, with every wire form.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';

let pki: TestPki;
let server: TestServer;
const pem: Record<string, { cert: string; key: string }> = {};

before(async () => {
  pki = await makeTestPki();
  for (const name of ['alice', 'bob', 'revoked', 'expired', 'selfsigned', 'ed25519', 'stranger'] as const) {
    const c = pki.clients[name];
    pem[name] = { cert: await readFile(c.cert, 'utf8'), key: await readFile(c.key, 'utf8') };
  }
  const tls = `{ cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }`;
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: starttls, ${tls.slice(2)}
    requireTls: true
    auth: { mechanisms: [EXTERNAL, PLAIN], required: true }
    certificateIdentity: { field: emailAddress }
  - name: subs
    listen: 127.0.0.1:0
    tls: { mode: implicit, ${tls.slice(2)}
    auth: { mechanisms: [EXTERNAL, PLAIN], required: true }
    certificateIdentity: { field: emailAddress }
`,
  });
});
after(() => server.stop());

async function startTls(name: keyof typeof pem | null): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), ...(name ? pem[name] : {}) } });
  return c;
}

test('EXTERNAL is advertised only after TLS and only with a usable certificate', async () => {
  const plain = await SmtpTestClient.connect(server.port('sub'));
  const before = await plain.hello();
  assert.doesNotMatch(before.text, /AUTH/);
  assert.match(before.text, /STARTTLS/);
  const r = await plain.command('AUTH EXTERNAL =');
  assert.equal(r.code, 538);
  assert.match(r.text, /^538 5\.7\.11 /);
  await plain.quit();

  const alice = await startTls('alice');
  assert.match(alice.transcript.join('\n'), /250[- ]AUTH EXTERNAL PLAIN/);
  await alice.quit();
  const none = await startTls(null);
  const afterTls = none.transcript.join('\n').split('STARTTLS').pop()!;
  assert.match(afterTls, /^S: 250-AUTH PLAIN$/m);
  assert.doesNotMatch(afterTls, /EXTERNAL/);
  await none.quit();
});

test('AUTH EXTERNAL = (empty initial response) logs in as the certificate identity', async () => {
  const c = await startTls('alice');
  const r = await c.command('AUTH EXTERNAL =');
  assert.equal(r.text, '235 2.7.0 Authentication successful');
  const m = await c.sendMail('alice@example.com', ['someone@elsewhere.example']);
  assert.match(m.text, /^250 2\.0\.0 Ok: queued as [0-9a-z]+$/);
  await c.quit();
});

test('AUTH EXTERNAL <base64 authzid>: own address accepted, another refused with 535 5.7.8', async () => {
  const ok = await startTls('alice');
  assert.equal((await ok.command(`AUTH EXTERNAL ${Buffer.from('alice@example.com').toString('base64')}`)).code, 235);
  await ok.quit();
  const bad = await startTls('alice');
  const r = await bad.command(`AUTH EXTERNAL ${Buffer.from('bob@example.com').toString('base64')}`);
  assert.match(r.text, /^535 5\.7\.8 /);
  await bad.quit();
});

test('AUTH EXTERNAL then 334 and the client line: empty line, =, base64, * and bad base64', async () => {
  for (const [line, code] of [['', 235], ['=', 235], [Buffer.from('alice@example.com').toString('base64'), 235], ['*', 501], ['=AAA', 501], ['YWxpY2U', 501]] as const) {
    const c = await startTls('alice');
    const challenge = await c.command('AUTH EXTERNAL');
    assert.equal(challenge.lines[0], '334 ');
    const r = await c.command(line);
    assert.equal(r.code, code, `response ${JSON.stringify(line)}: ${r.text}`);
    if (line === '=AAA') assert.match(r.text, /^501 5\.5\.2 /);
    await c.quit();
  }
});

test('AUTH EXTERNAL with bad base64 as initial response is 501 5.5.2', async () => {
  const c = await startTls('alice');
  assert.match((await c.command('AUTH EXTERNAL a=b=')).text, /^501 5\.5\.2 /);
  await c.quit();
});

test('an authzid with a control character, C0 or C1 (U+009B, a terminal\'s CSI), or that is not UTF-8, is refused as PLAIN refuses such a username: 501 5.5.4, not as bad base64', async () => {
  const c = await startTls('alice');
  const malformed = '501 5.5.4 Error: malformed SASL response (a missing username, control characters, or not the three PLAIN fields)';
  for (const authzid of ['alice@example.com\x1b[2J', 'alice@example.com\u009b2J', 'alice@example.com\u0085', 'alice@example.com\0']) {
    assert.equal((await c.command(`AUTH EXTERNAL ${Buffer.from(authzid).toString('base64')}`)).text, malformed, JSON.stringify(authzid));
  }
  // Valid base64 of bytes that are not UTF-8, as the initial response and after 334.
  const latin1 = Buffer.from('alice@exampl\xe9.com', 'latin1').toString('base64');
  assert.equal((await c.command(`AUTH EXTERNAL ${latin1}`)).text, malformed);
  assert.equal((await c.command('AUTH EXTERNAL')).code, 334);
  assert.equal((await c.command(latin1)).text, malformed);
  assert.equal((await c.command('AUTH EXTERNAL =')).code, 235, 'the session goes on');
  await c.quit();
});

test('certificates without identity: no certificate, untrusted, revoked, expired, self-signed → 535 5.7.8', async () => {
  for (const name of [null, 'stranger', 'revoked', 'expired', 'selfsigned'] as const) {
    const c = await startTls(name);
    const r = await c.command('AUTH EXTERNAL =');
    // EXTERNAL is not offered; a client that tries anyway gets a permanent refusal, never 4xx.
    assert.ok(r.code === 535 || r.code === 504, `${name}: ${r.text}`);
    if (r.code === 535) assert.match(r.text, /^535 5\.7\.8 /);
    await c.quit();
  }
});

test('a second AUTH after success is 503 5.5.1; PLAIN with an empty password never authenticates', async () => {
  const c = await startTls('alice');
  assert.equal((await c.command('AUTH EXTERNAL =')).code, 235);
  assert.match((await c.command('AUTH EXTERNAL =')).text, /^503 5\.5\.1 /);
  await c.quit();
  const p = await startTls(null);
  const r = await p.command(`AUTH PLAIN ${Buffer.from('\0alice@example.com\0').toString('base64')}`);
  assert.match(r.text, /^535 5\.7\.8 /);
  await p.quit();
});

test('implicit TLS requests the client certificate and EXTERNAL works there', async () => {
  const c = await SmtpTestClient.connect(server.port('subs'), { implicitTls: { ca: await readFile(pki.ca.cert, 'utf8'), ...pem.ed25519 } });
  const ehlo = await c.hello();
  assert.match(ehlo.text, /AUTH EXTERNAL/);
  assert.equal((await c.command('AUTH EXTERNAL =')).code, 235);
  const m = await c.sendMail('ed@example.com', ['x@elsewhere.example']);
  assert.equal(m.code, 250);
  await c.quit();
});

test('without AUTH, MAIL FROM on the submission listener is 530 5.7.0', async () => {
  const c = await startTls('alice');
  assert.match((await c.command('MAIL FROM:<alice@example.com>')).text, /^530 5\.7\.0 /);
  await c.quit();
});
