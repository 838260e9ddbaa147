// A recipient table that lists no address of any local domain refuses every local recipient with a permanent 550,
// as an emptied one does, which is refused for that reason. One whose every entry has the domain mistyped
// (`alice@exmaple.com`, a generator's template), or is of a domain not yet in localDomains, was taken with a warning:
// from that reload on all mail to the local domains bounced at its senders. Now refused as the emptied table is: the
// running table answers. A real server, real SMTP client, real reloads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

let server: TestServer;
before(async () => {
  server = await startTestServer({
    files: { recipients: 'alice@example.com\nbob@example.org\n' },
    config: `
localDomains: [example.com, example.org]
localRecipients: ./recipients
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
  await c.command('MAIL FROM:<sender@elsewhere.example>');
  const r = await c.command(`RCPT TO:<${to}>`);
  await c.quit();
  return r.code;
}

test('a table of no local domain\'s addresses is refused with its file; one that misses a local domain is taken with a warning', async () => {
  const table = join(server.dir, 'recipients');
  await writeFile(`${table}.new`, 'alice@exmaple.com\nbob@exmaple.org\n');
  await rename(`${table}.new`, table);
  const r = await server.reloader.reload('SIGHUP');
  assert.equal(r.ok, false, 'not taken');
  assert.match(String(server.reloader.status.data.lastError), new RegExp(`${table}: localRecipients: lists no address of any local domain`));
  assert.equal(await rcpt('alice@example.com'), 250, 'the running table answers');
  assert.equal(await rcpt('bob@example.org'), 250);

  await writeFile(`${table}.new`, 'alice@example.com\nbob@exmaple.org\n');
  await rename(`${table}.new`, table);
  assert.equal((await server.reloader.reload('SIGHUP')).ok, true, 'one local domain without entries: a warning, as before');
  assert.equal(await rcpt('alice@example.com'), 250);
  assert.equal(await rcpt('bob@example.org'), 550);
});
