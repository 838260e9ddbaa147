// A pin and a field that disagree: anyone may pin a public key to their own account (the account page takes a
// pasted certificate, and certificates are public), so a CA-verified certificate whose field names an account
// is that account's, whatever a pin says. Where they agree, or where the field names nobody (unverified, no
// such field), the pin decides as before: its further senders and all.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { clientTlsOptions, makeTestPki, type ClientName, type TestPki } from '../helpers/pki.ts';

let pki: TestPki;
let server: TestServer;

before(async () => {
  pki = await makeTestPki();
  server = await startTestServer({
    files: {
      devices: [
        `${pki.clients.alice.pinBase64Url} bob@example.com`, // bob pinned alice's key (from her certificate) to himself
        `${pki.clients.ecdsa.pinBase64Url} ec@example.com alias@example.com`, // the field's own account, with a further sender
        `${pki.clients.selfsigned.pinBase64Url} carol@example.com`, // unverified: only the pin names it
        `${pki.clients.stranger.pinBase64Url} dave@example.com`, // another CA's (unverified here)
      ].join('\n') + '\n',
    },
    config: `
localDomains: [example.com]
tables: { devices: ./devices }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
    auth: { mechanisms: [EXTERNAL] }
    certificateIdentity: { field: emailAddress, pins: devices }
    senderLogin: { enforce: true }
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(() => server.stop());

/** AUTH EXTERNAL with `name`'s certificate: who it logged in as (from the log), and MAIL FROM's reply for `from`. */
async function login(name: ClientName, from: string): Promise<{ user: unknown; mail: number }> {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: await clientTlsOptions(pki, name) });
  const auth = await c.command('AUTH EXTERNAL =');
  const user = auth.code === 235 ? server.logs.findLast((l) => l.msg === 'authenticated')?.user : null;
  const mail = (await c.command(`MAIL FROM:<${from}>`)).code;
  await c.quit();
  return { user, mail };
}

test('a verified certificate whose field names alice, pinned to bob: alice\'s, not bob\'s', async () => {
  assert.deepEqual(await login('alice', 'alice@example.com'), { user: 'alice@example.com', mail: 250 });
  assert.deepEqual(await login('alice', 'bob@example.com'), { user: 'alice@example.com', mail: 553 });
});

test('the pin still decides where it agrees with the field (its further senders too) or the field names nobody', async () => {
  assert.deepEqual(await login('ecdsa', 'alias@example.com'), { user: 'ec@example.com', mail: 250 });
  assert.deepEqual(await login('selfsigned', 'carol@example.com'), { user: 'carol@example.com', mail: 250 });
  // Another CA's certificate with alice's emailAddress: not verified, so the pin names it.
  assert.deepEqual(await login('stranger', 'dave@example.com'), { user: 'dave@example.com', mail: 250 });
});
