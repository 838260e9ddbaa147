// Header edit values with Unicode line separators: NEL (U+0085), LINE SEPARATOR (U+2028), PARAGRAPH
// SEPARATOR (U+2029) and the other C1 controls are no CR or LF byte, but readers that split lines the
// Unicode way (Python's str.splitlines(), which its email parser long used, and others) break the field
// there: the rest becomes a field of the script's choosing, or the body. They fail closed as CR and LF do,
// while other non-ASCII text (RFC 6532) is still written. Real server and spool.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

let server: TestServer;

before(async () => {
  server = await startTestServer({
    config: 'localDomains: [example.com]\nlisteners:\n  - name: mx\n    listen: 127.0.0.1:0\n    limits: { greetingDelayMs: 0 }\n',
    // The value comes from the message's X-Value field, code points written as \uXXXX.
    scripts: { 'data.ts': `export default (ctx) => {
  const raw = (ctx.data.headers.find(([n]) => n === 'X-Value') ?? [])[1] ?? '';
  const value = raw.replace(/\\\\u([0-9a-f]{4})/g, (_, h) => String.fromCharCode(parseInt(h, 16)));
  return accept({ headers: [{ op: 'add', name: 'X-Note', value }] });
};` },
  });
});
after(() => server.stop());

async function send(value: string): Promise<{ code: number; text: string; id: string | null }> {
  const c = await SmtpTestClient.connect(server.port('mx'));
  try {
    await c.hello();
    const r = await c.sendMail('a@example.org', ['b@example.com'], `X-Value: ${value}\r\nSubject: s\r\n\r\nbody\r\n`);
    return { code: r.code, text: r.text, id: /queued as ([0-9a-z]+)/.exec(r.text)?.[1] ?? null };
  } finally {
    await c.quit();
  }
}

for (const [name, cp] of [['NEL', '0085'], ['LINE SEPARATOR', '2028'], ['PARAGRAPH SEPARATOR', '2029'], ['C1 CSI', '009b'], ['C1 PAD', '0080']]) {
  test(`a value with ${name} (U+${cp.toUpperCase()}) fails closed, nothing spooled`, async () => {
    const before = (await server.runtime.spool.list()).length;
    const r = await send(`ok\\u${cp}Bcc: victim@example.net`);
    assert.equal(r.text, '451 4.3.0 Temporary policy failure, try again later');
    assert.equal((await server.runtime.spool.list()).length, before);
  });
}

test('other non-ASCII text is written as UTF-8', async () => {
  const r = await send('caf\\u00e9 \\u2713 \\u00a0end');
  assert.equal(r.code, 250, r.text);
  const text = (await server.runtime.spool.readMessage(r.id!)).toString('utf8');
  assert.match(text, /\r\nX-Note: café ✓ \u00a0end\r\n/);
});
