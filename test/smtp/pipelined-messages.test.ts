// Messages pipelined one behind another in one write (a client that sends the next transaction right after
// a message's final dot): each is answered, and so is every command after them. smtp-server's parser lost
// the continuation of the second message when the first one's continuation ran into it at once, and the
// session stopped answering (and, half-closed, never closed) until its idle timeout.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, PLAIN_MX_CONFIG, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

let server: TestServer;
before(async () => { server = await startTestServer({ config: PLAIN_MX_CONFIG }); });
after(() => server.stop());

const transaction = (body: string) => `MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n${body}.\r\n`;

test('three messages and a NOOP in one write: every reply comes, then QUIT closes', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  c.socket.write(transaction('Subject: one\r\n\r\n1\r\n') + transaction('') + transaction('Subject: three\r\n\r\n3\r\n') + 'NOOP\r\nQUIT\r\n');
  const replies = await c.repliesUntilClosed();
  assert.deepEqual(replies.map((r) => r.code), [250, 250, 354, 250, 250, 250, 354, 250, 250, 250, 354, 250, 250, 221]);
  assert.equal(replies.filter((r) => /^250 2\.0\.0 Ok: queued as /.test(r.text)).length, 3);
});

test('two messages in one write and a half-close: both answered, and the server closes', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  c.socket.end(transaction('b\r\n') + transaction('c\r\n'));
  const replies = await c.repliesUntilClosed();
  assert.deepEqual(replies.map((r) => r.code), [250, 250, 354, 250, 250, 250, 354, 250]);
});
