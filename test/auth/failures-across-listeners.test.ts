// AUTH failures are counted per address over every listener (switching ports escapes nothing), but they stop
// logins only where there is one: an MX without AUTH keeps taking that address's mail.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { INVALID, TOO_MANY, plain } from './helpers/submission.ts';

let pki: TestPki;
let ca: string;
let users: string;

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  users = `alice@example.com:${await hashPassword('alice-Secret-1')}\n`;
});

test('an address over authFailuresPerIp on submission is refused at connect there and on every listener with AUTH, not on the MX without it', async () => {
  const tls = `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }`;
  const s = await startTestServer({
    config: `
localDomains: [example.com]
users: ./users
listeners:
  - { name: mx, listen: "127.0.0.1:0", reverseDns: false, limits: { greetingDelayMs: 0, authFailuresPerIp: 3 } }
  - { name: sub, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [PLAIN] }, limits: { authFailuresPerIp: 3, authFailuresBeforeDelay: 100 } }
  - { name: sub2, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls}, auth: { mechanisms: [PLAIN] }, limits: { authFailuresPerIp: 3 } }
`,
    files: { users },
  });
  try {
    const guesser = await SmtpTestClient.connect(s.port('sub'));
    await guesser.hello({ starttls: { ca } });
    for (let i = 0; i < 3; i++) assert.equal((await guesser.command(plain('alice@example.com', `guess-${i}`))).text, INVALID);
    guesser.destroy();
    // Another listener with AUTH: the count is the address's, whichever port it guessed on.
    const other = await SmtpTestClient.connect(s.port('sub2'));
    assert.equal((await other.read()).text, TOO_MANY);
    other.destroy();
    // The MX offers no AUTH: nothing to guess there, its mail is taken.
    const mx = await SmtpTestClient.connect(s.port('mx'));
    await mx.hello(); // throws on anything but 220
    assert.equal((await mx.sendMail('sender@elsewhere.example', ['alice@example.com'])).code, 250);
    assert.equal((await mx.command('AUTH PLAIN')).code, 500, 'AUTH is not a command of the MX');
    mx.destroy();
  } finally {
    await s.stop();
  }
});
