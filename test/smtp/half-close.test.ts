// A client that half-closes (shuts its sending side after its last command, as `nc -N` does after QUIT) still
// gets every reply due, and the server closes once they are sent. Node's default ended the server's side at
// the client's FIN: pipelined commands went unanswered, and a message among them was spooled while its 250
// never left — the client would send it again.
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
      testListener('implicit', { reverseDns: false, tls: testServerTls(pki, { mode: 'implicit' }) }),
    ] }),
    // A script on the way: the replies wait for its calls, which finish after the client's FIN.
    scripts: { 'rcptto.ts': 'export default (ctx) => ctx.address.localPart === "nobody" ? reject("No such user", { code: 550, enhanced: "5.1.1" }) : undefined' },
  });
});
after(() => server.stop());

const TRANSACTION = 'MAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: half\r\n\r\nhi\r\n.\r\n';

for (const listener of ['mx', 'tls', 'implicit'] as const) {
  test(`${listener}: a pipelined transaction and QUIT, then FIN: every reply arrives, the message is spooled once, then the server closes`, async () => {
    const c = await SmtpTestClient.connect(server.port(listener), listener === 'implicit' ? { implicitTls: { ca } } : {});
    await c.hello(listener === 'tls' ? { starttls: { ca } } : {});
    c.socket.end(`${TRANSACTION}QUIT\r\n`);
    const replies = await c.repliesUntilClosed();
    assert.deepEqual(replies.map((r) => r.text.replace(/queued as \S+/, 'queued as <id>')), [
      '250 2.1.0 Accepted', '550 5.1.1 No such user', '250 2.1.5 Accepted', '354 End data with <CR><LF>.<CR><LF>',
      '250 2.0.0 Ok: queued as <id>', '221 2.0.0 Bye',
    ]);
    const id = /queued as (\S+)/.exec(replies[4]!.text)![1]!;
    assert.deepEqual((await server.runtime.spool.readEnvelope(id)).recipients.map((r) => r.address), ['b@example.com']);
  });
}

test('FIN without QUIT: the commands sent are answered, then the server closes its side', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  c.socket.end('MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n');
  assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.text), ['250 2.1.0 Accepted', '250 2.1.5 Accepted']);
});

test('FIN in the middle of a message: nothing is spooled, the server closes', async () => {
  const before = (await server.runtime.spool.list()).length;
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  c.socket.end('MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: cut\r\n\r\nno final dot\r\n');
  assert.deepEqual((await c.repliesUntilClosed()).map((r) => r.code), [250, 250, 354]);
  assert.equal((await server.runtime.spool.list()).length, before, 'a message without its final dot is never spooled');
});
