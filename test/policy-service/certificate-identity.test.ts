// A policy service's certificate identity follows a listener's rules: a verified CN (Postfix sends ccert_subject
// only for a certificate it verified) names the account unless it cannot name one (control characters, a
// KELVIN SIGN that lowercases to "k"), and it wins over a pin that names another account (anyone may pin a
// public key); a pin names the account of an unverified certificate. Over a real socket, Postfix's attributes.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

const PIN = 'AB:'.repeat(31) + 'AB';
const CERT_FP = '5B:57:FE:31:CA:69:3D:FB:9E:99:22:9D:2B:8B:89:73:5B:57:FE:31:CA:69:3D:FB:9E:99:22:9D:2B:8B:89:73';

let s: TestServer;

before(async () => {
  s = await startTestServer({
    config: `
tables: { pins: ./pins }
listeners: [{ name: smtp, listen: 127.0.0.1:0 }]
policyServices:
  - { name: p, listen: 127.0.0.1:0, certificateIdentity: { field: CN, pins: pins } }
`,
    files: { pins: `${PIN} bob@example.org\n` },
    scripts: { 'rcptto.ts': `export default (ctx) => reject(String(ctx.connection.certificateIdentity));` },
  });
});
after(() => s?.stop());

async function identity(attrs: Record<string, string>): Promise<string> {
  const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get('p')!.split(':').pop()) });
  try {
    return (await c.ask(rcptRequest({ ccert_fingerprint: CERT_FP, ...attrs }))).replace(/^action=\S+ (\S+ )?/, '');
  } finally {
    c.close();
  }
}

test('a pinned key: the pin names an unverified certificate; a verified CN naming another account wins over it', async () => {
  assert.equal(await identity({ ccert_pubkey_fingerprint: PIN }), 'bob@example.org');
  assert.equal(await identity({ ccert_pubkey_fingerprint: PIN, ccert_subject: 'alice@example.org', ccert_issuer: 'Example CA' }), 'alice@example.org');
  assert.equal(await identity({ ccert_subject: 'alice@example.org', ccert_issuer: 'Example CA' }), 'alice@example.org');
});

test("a verified CN that cannot name an account: none, or the pin's account", async () => {
  assert.equal(await identity({ ccert_subject: '\u212Aate@example.org', ccert_issuer: 'Example CA' }), 'null');
  assert.equal(await identity({ ccert_subject: 'alice\u202e@example.org', ccert_issuer: 'Example CA' }), 'null');
  assert.equal(await identity({ ccert_pubkey_fingerprint: PIN, ccert_subject: '\u212Aate@example.org', ccert_issuer: 'Example CA' }), 'bob@example.org');
});
