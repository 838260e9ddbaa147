// recipientDelimiter is Postfix's recipient_delimiter, and Postfix (split_addr) never splits some local parts: with
// `-` among the delimiters, `owner-foo` and `foo-request` (mailing-list conventions), and never `postmaster`,
// `MAILER-DAEMON` or `double-bounce`. Postern split them all: `alice-request@` was accepted as alice's, and a Postfix
// next hop with the same delimiter looked up `alice-request`, found no one, and bounced to the forged sender. Real
// SMTP client, real server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

let server: TestServer;
before(async () => {
  server = await startTestServer({
    files: { recipients: 'alice@example.com\nowner@example.com\nmailer@example.com\nlist-request@example.com\n' },
    config: `
localDomains: [example.com]
localRecipients: ./recipients
recipientDelimiter: "+-"
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(() => server.stop());

async function rcpt(to: string): Promise<number> {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  await c.command('MAIL FROM:<forged-victim@innocent.example>');
  const r = await c.command(`RCPT TO:<${to}>`);
  await c.quit();
  return r.code;
}

test('owner-foo, foo-request and MAILER-DAEMON are not split at a `-` delimiter, as Postfix does not; other subaddresses are', async () => {
  for (const to of ['alice-request@example.com', 'ALICE-REQUEST@example.com', 'owner-alice@example.com', 'MAILER-DAEMON@example.com']) {
    assert.equal(await rcpt(to), 550, `${to} refused (unsplit, unlisted)`);
  }
  for (const to of ['alice-lists@example.com', 'alice+request@example.com', 'list-request@example.com', 'alice-request-x@example.com', 'mailer-x@example.com']) {
    assert.equal(await rcpt(to), 250, `${to} accepted`);
  }
});
