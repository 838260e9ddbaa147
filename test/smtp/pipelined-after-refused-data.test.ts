// A DATA that is refused (no recipient accepted, no MAIL, no EHLO) while the client has already sent more
// after it: that input is the message the client pipelined ahead of the 354 (RFC 2920 forbids it, broken
// clients and naive senders do it), so none of its lines may run as a command. Before, each line did: a
// message body holding `MAIL FROM`, `RCPT TO`, `DATA` and a `.` line was spooled as a second message that
// the client never sent as one (SMTP smuggling through a refused DATA). Now the DATA gets 554 5.5.0 and the
// connection is closed, as Postfix does with smtpd_forbid_unauth_pipelining. A client that waits for the
// refusal goes on as before, and content pipelined after an accepted DATA is still the message.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';

let server: TestServer;
let ca = '';

before(async () => {
  const pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], listeners: [
      testListener('mx', { reverseDns: false }),
      testListener('tls', { reverseDns: false, tls: testServerTls(pki) }),
    ] }),
  });
});
after(() => server.stop());

const SYNC = '554 5.5.0 Error: SMTP protocol synchronization (message content sent before the reply to DATA)';
/** A message whose body holds a whole transaction: run as commands, it is a second, forged message. */
const SMUGGLING_BODY = 'Subject: hi\r\n\r\nMAIL FROM:<forged@example.org>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n'
  + 'Subject: forged\r\n\r\nsmuggled\r\n.\r\n.\r\n';

for (const listener of ['mx', 'tls'] as const) {
  test(`${listener}: the message pipelined after a DATA refused for want of recipients is not read as commands`, async () => {
    const spooled = (await server.runtime.spool.list()).length;
    const c = await SmtpTestClient.connect(server.port(listener));
    await c.hello(listener === 'tls' ? { starttls: { ca } } : {});
    c.socket.write(`MAIL FROM:<a@example.org>\r\nRCPT TO:<b@elsewhere.example>\r\nDATA\r\n${SMUGGLING_BODY}QUIT\r\n`);
    assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.text), [
      '250 2.1.0 Accepted', '554 5.7.1 <b@elsewhere.example>: Relay access denied', SYNC,
    ]);
    assert.equal((await server.runtime.spool.list()).length, spooled, 'nothing spooled');
  });
}

test('the same without a transaction: DATA and a message pipelined right after EHLO', async () => {
  const spooled = (await server.runtime.spool.list()).length;
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  c.socket.write(`DATA\r\n${SMUGGLING_BODY}`);
  assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.text), [SYNC]);
  assert.equal((await server.runtime.spool.list()).length, spooled, 'nothing spooled');
});

test('BDAT (CHUNKING is not offered): refused and closed, its chunk never read as commands', async () => {
  const spooled = (await server.runtime.spool.list()).length;
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  const chunk = `MAIL FROM:<forged@example.org>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n${SMUGGLING_BODY}`;
  c.socket.write(`BDAT ${chunk.length} LAST\r\n${chunk}`);
  assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.text), ['554 5.5.1 Error: BDAT without CHUNKING (not offered), the chunk cannot be read']);
  assert.equal((await server.runtime.spool.list()).length, spooled, 'nothing spooled');
});

test('a client that waits for the refusal of DATA goes on; content pipelined after an accepted DATA is the message', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@elsewhere.example>')).code, 554);
  assert.equal((await c.command('DATA')).text, '503 5.5.1 Error: need RCPT command');
  assert.equal((await c.command('RSET')).code, 250);
  c.socket.write(`MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n${SMUGGLING_BODY}QUIT\r\n`);
  const replies = (await c.repliesUntilClosed()).map((r) => r.text.replace(/queued as \S+/, 'queued as <id>'));
  assert.deepEqual(replies, ['250 2.1.0 Accepted', '250 2.1.5 Accepted', '354 End data with <CR><LF>.<CR><LF>',
    '250 2.0.0 Ok: queued as <id>', '500 5.5.2 Error: command not recognized', '221 2.0.0 Bye']);
});
