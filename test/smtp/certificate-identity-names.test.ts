// A certificate field names an account only when it can name one unambiguously: one CN (not two, not a
// multi-valued RDN), no control, format or space characters (NUL, bidi overrides, a trailing space), and
// nothing that lowercasing turns into another account's name (U+212A KELVIN SIGN lowercases to "k").
// Each certificate is signed by the listener's CA (it verifies), and is tried with AUTH EXTERNAL on a
// `field: CN` listener and with autoLogin on another; a well-formed CN still works.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { issueClientCertificate } from '../../engine/certificates/index.ts';

let pki: TestPki;
let server: TestServer;
let ca = '';

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  const tls = `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }`;
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - { name: external, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { field: CN }, limits: { greetingDelayMs: 0, authFailuresPerIp: 1000 } }
  - { name: auto, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [EXTERNAL] }, certificateIdentity: { field: CN, autoLogin: true }, limits: { greetingDelayMs: 0 } }
`,
    scripts: {
      // What the session is logged in as, and the identity the certificate gave (JSON keeps a NUL visible).
      'mailfrom.ts': `export default (ctx) => reject(JSON.stringify([ctx.connection.auth?.username ?? null, ctx.connection.certificateIdentity ?? null]), { code: 550 });`,
    },
  });
});
after(() => server.stop());

/** The CN's identity as each listener sees it: [EXTERNAL's reply code, who it logged in as, autoLogin's login]. */
async function tryName(rdns: Array<Record<string, string[]>>): Promise<{ external: number; as: unknown; auto: unknown }> {
  const leaf = await issueClientCertificate(pki.authorities.ca, { commonName: 'unused', rdns, keyType: 'ecdsa' });
  const session = async (listener: string, command?: string): Promise<{ code: number | null; facts: unknown }> => {
    const c = await SmtpTestClient.connect(server.port(listener));
    try {
      await c.hello({ starttls: { ca, cert: leaf.cert, key: leaf.key } });
      const code = command ? (await c.command(command)).code : null;
      const mail = await c.command('MAIL FROM:<x@example.com>');
      return { code, facts: JSON.parse(mail.text.replace(/^550 5\.7\.1 /, '')) };
    } finally {
      c.socket.destroy();
    }
  };
  const external = await session('external', 'AUTH EXTERNAL =');
  const auto = await session('auto');
  return { external: external.code!, as: external.facts, auto: auto.facts };
}

test('a plain CN is the identity: AUTH EXTERNAL logs in as it, autoLogin too (the test can fail)', async () => {
  assert.deepEqual(await tryName([{ O: ['Example'] }, { CN: ['Kate'] }]), { external: 235, as: ['kate', 'kate'], auto: ['kate', 'kate'] });
});

test('U+212A KELVIN SIGN does not lowercase into another account: no identity', async () => {
  assert.deepEqual(await tryName([{ CN: ['\u212Aate'] }]), { external: 535, as: [null, null], auto: [null, null] });
});

test('U+0130 (lowercases to "i" and a combining dot) names no account', async () => {
  assert.deepEqual(await tryName([{ CN: ['\u0130an'] }]), { external: 535, as: [null, null], auto: [null, null] });
});

test('control, format and space characters: NUL, a bidi override, a trailing space, a line separator', async () => {
  for (const cn of ['alice\u0000.evil', 'alice\u202e', 'alice ', 'ali\u2028ce', 'alice\u200b']) {
    assert.deepEqual(await tryName([{ CN: [cn] }]), { external: 535, as: [null, null], auto: [null, null] }, JSON.stringify(cn));
  }
});

test('two CNs, in two RDNs or in one multi-valued RDN, name no account', async () => {
  assert.deepEqual(await tryName([{ CN: ['mallory'] }, { CN: ['alice'] }]), { external: 535, as: [null, null], auto: [null, null] });
  assert.deepEqual(await tryName([{ CN: ['mallory', 'alice'] }]), { external: 535, as: [null, null], auto: [null, null] });
});

test('a CN longer than any address names no account', async () => {
  assert.deepEqual(await tryName([{ CN: ['a'.repeat(250) + '@x.example'] }]), { external: 535, as: [null, null], auto: [null, null] });
});

// The sender binding compares an identity's domain IDNA-mapped (senderKey): admin@ｅｘａｍｐｌｅ.com sends as
// admin@example.com. A CA that checks requests for @example.com by string issued such a CN, and it spoke for the
// account. An address must be NFC with its domain in its A-label or U-label form exactly; both forms still work.
test('an address CN in another spelling of a domain (fullwidth, ideographic full stop, trailing dot, NFD) names no account', async () => {
  for (const cn of ['admin@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com', 'admin@example\u3002com', 'admin@example.com.', 'admin@ex\u00adample.com', 'jose\u0301@example.com']) {
    assert.deepEqual(await tryName([{ CN: [cn] }]), { external: 535, as: [null, null], auto: [null, null] }, JSON.stringify(cn));
  }
  for (const [cn, as] of [['Alice@B\u00dcCHER.example', 'alice@b\u00fccher.example'], ['alice@xn--bcher-kva.example', 'alice@xn--bcher-kva.example'], ['jos\u00e9@example.com', 'jos\u00e9@example.com']]) {
    const r = await tryName([{ CN: [cn!] }]);
    assert.equal(r.external, 235, cn);
    // The script's reply is 7-bit here (no SMTPUTF8): the identity's non-ASCII characters come back as "?".
    assert.deepEqual(r.as, [as!.replace(/[^\x00-\x7f]/gu, '?'), as!.replace(/[^\x00-\x7f]/gu, '?')], cn);
  }
});
