// Client certificates built to cost: a chain of many intermediates, a leaf too large for OpenSSL's certificate
// list (max_cert_list, 100 KB), a subject of tens of kilobytes. A chain within OpenSSL's verify depth (100)
// works; a list over 100 KB ends the handshake; a huge subject reaches scripts whole, the log and the
// sightings file cut (boundedName).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { createCertificateAuthority, issueClientCertificate, type Authority } from '../../engine/certificates/index.ts';

let server: TestServer;
let serverCa = '';
let root: Authority;

before(async () => {
  const pki = await makeTestPki();
  serverCa = await readFile(pki.ca.cert, 'utf8');
  root = await createCertificateAuthority({ commonName: 'Deep Root', keyType: 'ecdsa' });
  const tls = (cc: string) => `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: ${cc}, caFiles: [deep-root.crt] }`;
  server = await startTestServer({
    files: { 'deep-root.crt': root.cert },
    config: `
localDomains: [example.com]
listeners:
  - { name: request, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('request')}, limits: { greetingDelayMs: 0 } }
  - { name: require, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('require')}, limits: { greetingDelayMs: 0 } }
`,
    scripts: {
      'mailfrom.ts': `export default (ctx) => { const c = ctx.connection.clientCertificate;
        return reject(c ? [String(c.verified), c.san.dns.length, c.subject.dn.length].join(' ') : 'none', { code: 550 }); };`,
    },
  });
});
after(() => server.stop());

/** STARTTLS with `cert`, then what the mailfrom script saw, or 'closed' when the server ended the handshake. */
async function session(listener: string, cert: string, key: string): Promise<string> {
  const c = await SmtpTestClient.connect(server.port(listener));
  try {
    await c.read();
    await c.command('EHLO x.example');
    await c.starttls({ ca: serverCa, cert, key });
    // TLS 1.3: the client's handshake is done before the server has read its certificate; a refusal
    // shows as the connection closing at the next command.
    const ehlo = await c.command('EHLO x.example').catch(() => null);
    if (ehlo === null) return 'closed';
    return (await c.command('MAIL FROM:<a@x.example>')).text.replace(/^550 5\.7\.1 /, '');
  } finally {
    c.socket.destroy();
  }
}

test('a chain of 50 intermediates is verified and works, on request and on require listeners', { timeout: 120_000 }, async () => {
  const chain = [root];
  for (let i = 1; i <= 50; i++) chain.push(await createCertificateAuthority({ commonName: `Deep ${i}`, keyType: 'ecdsa', issuer: chain[i - 1] }));
  const leaf = await issueClientCertificate(chain.at(-1)!, { commonName: 'deep-leaf', keyType: 'ecdsa' });
  const pem = leaf.cert + chain.slice(1).reverse().map((a) => a.cert).join('');
  for (const listener of ['request', 'require']) assert.equal(await session(listener, pem, leaf.key), 'true 0 12', listener);
});

test('a certificate over OpenSSL\'s 100 KB certificate list ends the handshake; one under it works whole', { timeout: 120_000 }, async () => {
  const sans = (n: number) => Array.from({ length: n }, (_, i) => `host${i}.example.org`);
  const big = await issueClientCertificate(root, { commonName: 'big', keyType: 'ecdsa', dnsNames: sans(3000) }); // ~65 KB DER
  const huge = await issueClientCertificate(root, { commonName: 'huge', keyType: 'ecdsa', dnsNames: sans(6000) }); // ~130 KB DER
  for (const listener of ['request', 'require']) {
    assert.equal(await session(listener, big.cert, big.key), 'true 3000 6', listener);
    assert.equal(await session(listener, huge.cert, huge.key), 'closed', listener);
  }
});

test('a 60 KB subject reaches scripts whole; log lines and the sightings file keep a bounded name', { timeout: 120_000 }, async () => {
  const leaf = await issueClientCertificate(root, { commonName: 'x'.repeat(60_000), keyType: 'ecdsa' });
  const logged = server.logs.length;
  for (const listener of ['request', 'require']) assert.equal(await session(listener, leaf.cert, leaf.key), 'true 0 60003', listener);
  const lines = server.logs.slice(logged).map((l) => JSON.stringify(l));
  assert.ok(lines.some((l) => l.includes('TLS established')) && lines.some((l) => l.includes('NOQUEUE')));
  const longest = Math.max(...lines.map((l) => l.length));
  assert.ok(longest < 4096, `a log line of ${longest} characters`);
  const sightings = server.certificates.sightings!;
  await sightings.flush();
  const file = await readFile(sightings.file, 'utf8');
  // "CN=" and 509 of the name's characters: 512 in all.
  assert.ok(file.includes(`"CN=${'x'.repeat(509)}..."`) && !file.includes('x'.repeat(510)), 'the sighting keeps the subject cut at 512 characters');
});

test('large certificates are described on each connection but not kept: 1000 of 100 KB held 600 MB of heap for good', { timeout: 120_000 }, async () => {
  const { describedCertificatesCached } = await import('../../engine/certificates/describe.ts');
  const small = await issueClientCertificate(root, { commonName: 'small', keyType: 'ecdsa' });
  const before = describedCertificatesCached();
  assert.equal(await session('request', small.cert, small.key), 'true 0 8');
  const afterSmall = describedCertificatesCached();
  assert.equal(afterSmall.entries, before.entries + 1, 'a device certificate is kept (the check can fail)');
  for (let i = 0; i < 3; i++) {
    const large = await issueClientCertificate(root, { commonName: `large-${i}`, keyType: 'ecdsa', dnsNames: Array.from({ length: 1000 }, (_, n) => `host${n}.example.org`) }); // ~21 KB DER
    assert.equal(await session('request', large.cert, large.key), `true 1000 ${`CN=large-${i}`.length}`);
  }
  assert.deepEqual(describedCertificatesCached(), afterSmall);
});
