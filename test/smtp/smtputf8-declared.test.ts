// A non-ASCII address is taken only in a transaction whose MAIL FROM declared SMTPUTF8 (RFC 6531 §3.4;
// Postfix answers the same 553 5.6.7). Undeclared, it was accepted and spooled, then relayed as a UTF-8
// envelope the client never announced, to next hops that may not speak SMTPUTF8 at all. With Python's
// smtplib: declared (mail_options SMTPUTF8) it is accepted; a client that writes UTF-8 without declaring it
// (smtplib with its command encoding switched to UTF-8) is refused at MAIL FROM and at RCPT TO.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestServer, type TestServer } from '../helpers/postern.ts';

const run = promisify(execFile);
let server: TestServer;

before(async () => {
  server = await startTestServer({
    config: `
localDomains: [example.com, bücher.example]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(() => server.stop());

test('python smtplib: UTF-8 addresses with SMTPUTF8 declared are accepted; undeclared, 553 5.6.7 at MAIL FROM and RCPT TO', async () => {
  const before = (await server.runtime.spool.list()).length;
  const py = `
import smtplib
s = smtplib.SMTP("127.0.0.1", ${server.port('mx')}, local_hostname="client.example")
s.ehlo()
assert s.has_extn("smtputf8")
# Declared: the whole transaction may use UTF-8 addresses.
s.sendmail("jürgen@bücher.example", ["renée@example.com"], "Subject: declared\\r\\n\\r\\nhi\\r\\n".encode(), mail_options=["SMTPUTF8"])
print("declared ok")
# Undeclared: a client that writes UTF-8 commands without the parameter.
s.command_encoding = "utf-8"
print("mail", s.docmd("MAIL", "FROM:<jürgen@bücher.example>"))
print("mail-ascii", s.docmd("MAIL", "FROM:<juergen@example.net>"))
print("rcpt", s.docmd("RCPT", "TO:<renée@example.com>"))
print("rcpt-ascii", s.docmd("RCPT", "TO:<rene@example.com>"))
s.quit()
`;
  const { stdout } = await run('python3', ['-c', py]);
  assert.match(stdout, /^declared ok$/m);
  assert.match(stdout, /^mail \(553, b'5\.6\.7 Must declare SMTPUTF8 to send unicode address'\)$/m);
  assert.match(stdout, /^mail-ascii \(250, /m);
  assert.match(stdout, /^rcpt \(553, b'5\.6\.7 Must declare SMTPUTF8 to send unicode address'\)$/m);
  assert.match(stdout, /^rcpt-ascii \(250, /m);
  assert.equal((await server.runtime.spool.list()).length, before + 1, 'only the declared message was spooled');
});
