// A client's message that starts with a space or a tab: that first line is no field of its own, and right
// after our Received header a reader takes it for a continuation of it (RFC 5322 §2.2.3), so a client could
// write into our trace header ("(Authenticated sender: ceo@…)"), or, with a header edit, into a field the
// data hook adds. Such a message has no header section of its own (as Exim reads it): an empty line goes
// after our header, and the client's lines are body. Real server, real spool, with and without a data hook.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

let plain: TestServer;
let hooked: TestServer;
const LISTENER = 'listeners:\n  - name: mx\n    listen: 127.0.0.1:0\n    limits: { greetingDelayMs: 0 }\nlocalDomains: [example.com]\n';

before(async () => {
  plain = await startTestServer({ config: LISTENER });
  hooked = await startTestServer({
    config: LISTENER,
    scripts: { 'data.ts': `export default async (ctx) => accept({ text: 'headers=' + ctx.data.headers.length + ' body=' + JSON.stringify((await ctx.message.text()).slice(0, 12)), headers: [{ op: 'add', name: 'X-Checked', value: 'yes' }] });` },
  });
});
after(async () => {
  await plain?.stop();
  await hooked?.stop();
});

async function spooled(server: TestServer, message: string): Promise<{ reply: string; head: string[]; body: string }> {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  const r = await c.sendMail('a@example.org', ['b@example.com'], message);
  await c.quit();
  const id = /queued as ([0-9a-z]+)/.exec(r.text)?.[1] ?? /id=([0-9a-z]+)/.exec(r.text)?.[1];
  assert.ok(r.code === 250, r.text);
  const ids = await server.runtime.spool.list();
  const text = (await server.runtime.spool.readMessage(id ?? ids.at(-1)!)).toString('utf8');
  const end = text.indexOf('\r\n\r\n');
  // The header fields as a reader unfolds them.
  const head = text.slice(0, end).split(/\r\n(?![ \t])/).map((f) => f.replace(/\r\n[ \t]+/g, ' '));
  return { reply: r.text, head, body: text.slice(end + 4) };
}

const HOSTILE = '\t(Authenticated sender: ceo@example.com)\r\nSubject: urgent\r\n\r\nPay now.\r\n';

for (const leading of ['\t', ' ']) {
  test(`a message starting with ${JSON.stringify(leading)} cannot write into our Received header`, async () => {
    const m = await spooled(plain, HOSTILE.replace('\t', leading));
    assert.equal(m.head.length, 1, m.head.join('\n'));
    assert.match(m.head[0]!, /^Received: from .* \(Postern\) with ESMTP id /);
    assert.ok(!m.head[0]!.includes('ceo@example.com'), m.head[0]);
    assert.equal(m.body, HOSTILE.replace('\t', leading));
  });
}

test('with a data hook: no client header fields, the body from the client\'s first line, the added field kept apart', async () => {
  const m = await spooled(hooked, HOSTILE);
  assert.match(m.reply, /^250 2\.0\.0 headers=0 body="\\t\(Authentica": queued as /);
  assert.deepEqual(m.head.map((f) => f.split(':')[0]), ['Received', 'X-Checked']);
  assert.equal(m.head[1], 'X-Checked: yes');
  assert.equal(m.body, HOSTILE);
});

test('an ordinary message is untouched: its header stays its header', async () => {
  const m = await spooled(plain, 'Subject: fine\r\n folded\r\n\r\nbody\r\n');
  assert.deepEqual(m.head.slice(1), ['Subject: fine folded']);
  assert.equal(m.body, 'body\r\n');
});
