// Postfix keeps a policy connection open across the SMTP sessions of many clients, and several smtpd processes
// ask at once: the requests of different clients follow each other on one policy connection and share the
// sandbox's batched entries. Each answer must describe its own request's client (address, port, HELO name,
// login, certificate and identity), never the previous request's on that connection or another connection's.
// A Postfix certificate is only what a request's ccert_* attributes say, so one fingerprint may come with or without
// ccert_pubkey_fingerprint (a Postfix before 2.9 sends none) or another subject: the certificate the sandbox keeps in
// an isolate must follow each request.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { PolicyClient, rcptRequest, type Attributes } from './helpers/policy-client.ts';

const hex = (byte: number): string => Array.from({ length: 32 }, () => byte.toString(16).padStart(2, '0').toUpperCase()).join(':');

let s: TestServer;

before(async () => {
  s = await startTestServer({
    config: `
sandbox: { isolates: 2, timeoutMs: 30000 }
listeners: [{ name: smtp, listen: 127.0.0.1:0 }]
policyServices:
  - { name: p, listen: 127.0.0.1:0, certificateIdentity: { field: CN } }
`,
    scripts: {
      // Async: the answer waits for the store, so requests of several connections are pending at once.
      'rcptto.ts': `export default async (ctx) => { await counter("n").add(1, 60); const c = ctx.connection; const k = c.clientCertificate;
        return reject([c.remoteAddress, c.remotePort, c.helo, c.auth ? c.auth.username : "-", k ? k.subject.CN ?? "-" : "-",
          k ? k.publicKeyFingerprint ?? "-" : "-", c.certificateIdentity ?? "-", ctx.address.address].join("|")); }`,
    },
  });
});
after(() => s?.stop());

/** Client `i`'s attributes: its own address, port, HELO, login and certificate (every third has none). */
function client(i: number): { attrs: Attributes; expected: string } {
  const address = `192.0.2.${1 + (i % 200)}`;
  const port = 40000 + i;
  const helo = `c${i}.example`;
  const user = i % 4 === 0 ? `user${i}` : '';
  const cert = i % 3 === 0 ? null : { cn: `dev${i}@example.org`, fp: hex(i % 7), pin: i % 2 ? hex(100 + (i % 5)) : '' };
  const attrs: Attributes = {
    client_address: address, client_port: port, helo_name: helo, sasl_username: user, sasl_method: user ? 'PLAIN' : '',
    ccert_subject: cert?.cn ?? '', ccert_issuer: cert ? 'Example CA' : '', ccert_fingerprint: cert?.fp ?? '', ccert_pubkey_fingerprint: cert?.pin ?? '',
  };
  const expected = [address, port, helo, user || '-', cert?.cn ?? '-', cert?.pin || '-', cert?.cn ?? '-'].join('|');
  return { attrs, expected };
}

test('one fingerprint described three ways, one request after another: each request sees its own description', async () => {
  const port = Number(s.policyAddresses.get('p')!.split(':').pop());
  const ask = async (subject: string, pin: string): Promise<string> => {
    const c = await PolicyClient.connect({ port });
    try {
      const attrs = { client_port: 1, ccert_fingerprint: hex(1), ccert_subject: subject, ccert_issuer: 'Example CA', ccert_pubkey_fingerprint: pin };
      return (await c.ask(rcptRequest({ ...attrs, recipient: 'r@example.com' }))).replace(/^action=\S+ (\S+ )?/, '');
    } finally {
      c.close();
    }
  };
  const seen = (subject: string, pin: string): string => ['192.0.2.10', 1, 'laptop.example.org', '-', subject, pin || '-', subject, 'r@example.com'].join('|');
  assert.equal(await ask('alice@example.org', hex(9)), seen('alice@example.org', hex(9)));
  assert.equal(await ask('alice@example.org', ''), seen('alice@example.org', ''));
  assert.equal(await ask('mallory@example.org', ''), seen('mallory@example.org', ''));
});

test('requests of many clients, interleaved on and across policy connections: each answer names its own client', { timeout: 300_000 }, async () => {
  const port = Number(s.policyAddresses.get('p')!.split(':').pop());
  const problems: string[] = [];
  await Promise.all(Array.from({ length: 20 }, async (_, conn) => {
    const c = await PolicyClient.connect({ port });
    try {
      for (let r = 0; r < 40; r++) {
        // The same few fingerprints come with different subjects and pins: the kept certificate must follow each request.
        const i = (conn * 7 + r * 13) % 300;
        const { attrs, expected } = client(i);
        const rcpt = `r${conn}-${r}@example.com`;
        const answer = (await c.ask(rcptRequest({ ...attrs, recipient: rcpt }))).replace(/^action=\S+ (\S+ )?/, '');
        if (answer !== `${expected}|${rcpt}`) problems.push(`connection ${conn} request ${r} (client ${i}): ${answer}, expected ${expected}|${rcpt}`);
      }
    } finally {
      c.close();
    }
  }));
  assert.deepEqual(problems.slice(0, 10), [], `${problems.length} problems`);
});
