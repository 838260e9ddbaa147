// Sender binding with an IDN: the login, the table's entries and the MAIL FROM address are compared with their
// domains by A-labels. An ASCII transaction carries `alice@xn--bcher-kva.example` (engine/smtp/envelope-path.ts),
// an SMTPUTF8 one `alice@bücher.example`: both are alice@bücher.example's own address, whichever form the users
// file and the table use; another domain is still refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';

const PASSWORD = 'alice-Secret-1';
let server: TestServer;
let ca = '';

before(async () => {
  const pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  server = await startTestServer({
    config: `
localDomains: [bücher.example]
users: ./users
tables: { sender_logins: ./sender_logins }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    auth: { mechanisms: [PLAIN] }
    senderLogin: { enforce: true, table: sender_logins }
`,
    files: {
      users: `alice@bücher.example:${await hashPassword(PASSWORD)}\n`,
      sender_logins: 'alice@bücher.example  info@xn--mnchen-3ya.example,@Straße.example\n',
    },
  });
});
after(() => server?.stop());

test('the own address, a listed address and a listed domain bind in A-labels and U-labels alike', async () => {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: { ca } });
  const plain = Buffer.from(`\0alice@bücher.example\0${PASSWORD}`).toString('base64');
  assert.equal((await c.command(`AUTH PLAIN ${plain}`)).code, 235);
  const cases: Array<[string, number]> = [
    ['alice@xn--bcher-kva.example', 250],
    ['alice@bücher.example SMTPUTF8', 250],
    ['ALICE@XN--BCHER-KVA.EXAMPLE', 250],
    ['info@münchen.example SMTPUTF8', 250],
    ['info@xn--mnchen-3ya.example', 250],
    ['anyone@xn--strae-oqa.example', 250],
    ['anyone@straße.example SMTPUTF8', 250],
    ['alice@buecher.example', 553],
    ['other@münchen.example SMTPUTF8', 553],
  ];
  for (const [sender, code] of cases) {
    const [address, ...params] = sender.split(' ');
    const r = await c.command(`MAIL FROM:<${address}>${params.map((p) => ` ${p}`).join('')}`);
    assert.equal(r.code, code, `${sender}: ${r.text}`);
    await c.command('RSET');
  }
  await c.quit();
});
