// The data hook's view of field names (ctx.data.headers) and its header edits find a field's name by one rule:
// the text before the colon, less the spaces and tabs around it (RFC 5322 obs-optional). The view trimmed with
// String.prototype.trim(), which also takes U+3000, U+00A0, a BOM or a vertical tab off, while edits decoded
// the name as latin1: `X-Trusted<U+3000>: yes` was X-Trusted to the script, whose `remove` of X-Trusted then
// left it in the message it accepted. Now the script sees the field as it is named, and whatever it sees as
// X-Trusted its edit removes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { HeaderReader } from '../../engine/smtp/header-reader.ts';
import { PLAIN_MX_CONFIG, startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

let server: TestServer;

before(async () => {
  server = await startTestServer({
    config: PLAIN_MX_CONFIG,
    scripts: {
      'data.ts': `export default (ctx) => {
        const seen = ctx.data.headers.filter(([n]) => n.toLowerCase() === 'x-trusted').map(([, v]) => v);
        return accept({ text: 'saw ' + JSON.stringify(seen), headers: [{ op: 'remove', name: 'X-Trusted' }] });
      };`,
    },
  });
});
after(() => server?.stop());

test('what the data hook sees as X-Trusted its remove edit removes; names with other spaces are not X-Trusted', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  const fields = [
    'X-Trusted : space', 'X-Trusted\t: tab', 'X-Trusted\u3000: ideographic', 'X-Trusted\u00a0: nbsp',
    '\ufeffX-Trusted: bom', '\u000bX-Trusted: vt', 'X-Trusted\u000c: ff',
  ];
  c.socket.write(`${fields.join('\r\n')}\r\nSubject: names\r\n\r\nbody\r\n.\r\n`);
  const r = await c.read(60_000);
  assert.equal(r.code, 250, r.text);
  assert.match(r.text, /saw \["space","tab"\]/);
  const { message } = await server.runtime.spool.readForDelivery(/queued as (\S+)/.exec(r.text)![1]!);
  // The spooled header section, our Received header first: no field the hook's view names X-Trusted is left.
  const reader = new HeaderReader(1 << 20);
  reader.push(message);
  const left = reader.headers().filter(([n]) => n.toLowerCase() === 'x-trusted');
  assert.deepEqual(left, []);
  const text = message.toString('utf8');
  for (const kept of ['ideographic', 'nbsp', 'bom', 'vt', 'ff']) assert.ok(text.includes(`: ${kept}\r\n`), `${kept} kept as its own field`);
  assert.ok(!text.includes(': space') && !text.includes(': tab'));
  await c.quit();
});

test('a name with a long run of blanks inside (a section that starts with a folded line): found in linear time', () => {
  // The trim was /^[ \t]+|[ \t]+$/g, whose `[ \t]+$` ran from each blank of a run to its end: the run's square (40 s
  // for 200,000 blanks here). The intake and `postern try` never hand the reader such a section (a first line that
  // starts with a blank makes the message all body there): a guard for the next caller of HeaderReader or fieldName.
  const name = `a${' '.repeat(300_000)}b`;
  const reader = new HeaderReader(1 << 30);
  reader.push(Buffer.from(` ${name}\t: x\r\nSubject: y\r\n\r\nbody\r\n`));
  const start = process.cpuUsage();
  const fields = reader.headers();
  const used = process.cpuUsage(start);
  const ms = (used.user + used.system) / 1000;
  assert.ok(ms < 5000, `${ms} ms of CPU`);
  assert.deepEqual(fields, [[name, 'x'], ['Subject', 'y']]);
});
