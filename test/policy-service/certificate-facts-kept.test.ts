// The sandbox keeps a client certificate in each isolate and sends it once: under a key that must change with
// every fact of it. A Postfix certificate is only what the request's ccert_* attributes say, so two requests naming
// the same certificate fingerprint may describe it differently: a Postfix that sends no ccert_pubkey_fingerprint
// (before 2.9) beside one that does, or another subject. Each request's script must see its own description, not
// the one an earlier request (another client's session) left in the isolate.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { PolicyClient, rcptRequest, type Attributes } from './helpers/policy-client.ts';

const PIN = 'AB:'.repeat(31) + 'AB';
const CERT_FP = '5B:57:FE:31:CA:69:3D:FB:9E:99:22:9D:2B:8B:89:73:5B:57:FE:31:CA:69:3D:FB:9E:99:22:9D:2B:8B:89:73';

let s: TestServer;

before(async () => {
  s = await startTestServer({
    config: `
sandbox: { isolates: 1 }
listeners: [{ name: smtp, listen: 127.0.0.1:0 }]
policyServices:
  - { name: p, listen: 127.0.0.1:0, certificateIdentity: { field: CN } }
`,
    scripts: {
      'rcptto.ts': `export default (ctx) => { const c = ctx.connection.clientCertificate;
        return reject(c.subject.CN + " " + (c.publicKeyFingerprint ?? "no-pin") + " " + ctx.connection.certificateIdentity); }`,
    },
  });
});
after(() => s?.stop());

async function seen(attrs: Attributes): Promise<string> {
  const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get('p')!.split(':').pop()) });
  try {
    return (await c.ask(rcptRequest({ ccert_fingerprint: CERT_FP, ccert_issuer: 'Example CA', ...attrs }))).replace(/^action=\S+ (\S+ )?/, '');
  } finally {
    c.close();
  }
}

test('two descriptions of one certificate fingerprint: each request sees its own', async () => {
  assert.equal(await seen({ ccert_subject: 'alice@example.org', ccert_pubkey_fingerprint: PIN, client_port: 1 }), `alice@example.org ${PIN} alice@example.org`);
  // A Postfix that sends no public-key fingerprint: the pin is not this request's fact.
  assert.equal(await seen({ ccert_subject: 'alice@example.org', client_port: 2 }), 'alice@example.org no-pin alice@example.org');
  // Another subject under the same fingerprint: its own CN, as its identity says.
  assert.equal(await seen({ ccert_subject: 'mallory@example.org', client_port: 3 }), 'mallory@example.org no-pin mallory@example.org');
});
