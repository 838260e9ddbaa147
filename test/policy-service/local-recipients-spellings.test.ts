// localRecipients through a policy service: Postfix asks with the recipient as its client wrote it, and delivers it so.
// The table folded the local part to NFC before its ASCII-safe lowercasing, and NFC alone maps U+212A KELVIN SIGN
// to `K`: `\u212Aate@example.com` was kate's, answered DUNNO, and Postfix accepted it for a mailbox server that
// has no such user (Dovecot folds ASCII case only), to bounce it later to a sender a spammer forged. A listener
// unchanged: it writes the recipient in NFC (RFC 6532) before the table sees it, so what it accepts is kate's.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

let server: TestServer;
before(async () => {
  server = await startTestServer({
    files: { recipients: 'kate@example.com\n', 'no-scripts/README': 'no scripts\n' },
    config: `
localDomains: [example.com]
localRecipients: ./recipients
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
policyServices:
  - { name: postfix, listen: 127.0.0.1:0, relayRule: true, scripts: ./no-scripts }
`,
  });
});
after(() => server.stop());

async function ask(recipient: string): Promise<string> {
  const c = await PolicyClient.connect({ port: Number(server.policyAddresses.get('postfix')!.split(':').pop()) });
  try {
    return await c.ask(rcptRequest({ recipient }));
  } finally {
    c.socket.destroy();
  }
}

test('policy service: a local part that NFC alone turns into a listed ASCII one is not that address', async () => {
  assert.equal(await ask('\u212Aate@example.com'), 'action=550 5.1.1 <\u212Aate@example.com>: Recipient address rejected: User unknown in local recipient table');
  assert.equal(await ask('\u212AATE@example.com'), 'action=550 5.1.1 <\u212AATE@example.com>: Recipient address rejected: User unknown in local recipient table');
  assert.match(await ask('KATE@example.com'), /^action=(DUNNO|OK)$/);
});

test('listener: the recipient is written in NFC before the table sees it, so the Kelvin sign arrives as kate\'s', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  await c.command('MAIL FROM:<sender@elsewhere.example> SMTPUTF8');
  assert.equal((await c.command('RCPT TO:<\u212Aate@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<nobody@example.com>')).code, 550);
  await c.quit();
});
