// The body a data script reads (ctx.message.text()) has the line ends the next hop receives: delivery sends a
// bare CR or bare LF as a line end (CRLF), so a script splitting the text at CRLF must see those lines too. Before,
// `text<CR>X-Evil: 1` was one line to a content check and two once relayed: a line the check refuses got through.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { PLAIN_MX_CONFIG, startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

let server: TestServer;

before(async () => {
  server = await startTestServer({
    config: PLAIN_MX_CONFIG,
    scripts: {
      'data.ts': `export default async (ctx) => {
  const lines = (await ctx.message.text()).split('\\r\\n');
  return lines.some((l) => l.startsWith('X-Evil:')) ? reject('a line the content check refuses') : accept();
};`,
    },
  });
});
after(() => server?.stop());

test('a line behind a bare CR or a bare LF in the body is a line to the data script, as to the next hop', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  for (const body of ['X-Evil: 1\r\n', 'text\rX-Evil: 1\r\n', 'text\nX-Evil: 1\r\n', 'text\r\rX-Evil: 1\r\n']) {
    const r = await c.sendMail('a@example.com', ['b@example.com'], `Subject: t\r\n\r\n${body}`);
    assert.equal(r.code, 550, `${JSON.stringify(body)}: ${r.text}`);
  }
  const fine = await c.sendMail('a@example.com', ['b@example.com'], 'Subject: t\r\n\r\ntext X-Evil: 1 inside a line\r\n');
  assert.equal(fine.code, 250, fine.text);
  await c.quit();
});
