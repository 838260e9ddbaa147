// A bare CR (a CR not followed by LF) in the header section: the next hop reads it as a line end (delivery sends
// every bare CR as CRLF, as nodemailer does), while ctx.data.headers and the data hook's header edits split lines
// at LF only. `Subject: a<CR>X-Trusted: yes` was one field to the script — its `remove` of X-Trusted missed it —
// and two once relayed. Such a message is refused after its dot (554 5.6.0, as sendmail does), nothing kept; a
// bare CR in the body is no line of the header section and is taken. The reader decides alike at every split.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { HeaderReader } from '../../engine/smtp/header-reader.ts';
import { PLAIN_MX_CONFIG, startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const CASES: Array<[string, boolean]> = [
  ['Subject: a\rX-Trusted: yes\r\n\r\nbody\r\n', true],
  ['X: a\r\r\nFrom: hidden\r\n\r\nbody\r\n', true], // CR CR LF: an empty line to the next hop
  ['A: 1\r\n\rB: lone CR at a line start\r\n\r\nbody', true],
  ['A: 1\r\nB: 2\n\r\nbody\rwith bare CR\r\n', false],
  ['A: 1\nB: 2\n\nbody\r\r\n', false],
  ['Subject: plain\r\n folded\r\n\r\n\r\n', false],
];

for (const [section, bare] of CASES) {
  test(`bare CR in ${JSON.stringify(section.slice(0, 30))}: ${bare} at every split`, () => {
    const bytes = Buffer.from(section);
    for (let a = 0; a <= bytes.length; a++) {
      for (let b = a; b <= bytes.length; b++) {
        const r = new HeaderReader(1 << 20);
        let refused = false;
        for (const piece of [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)]) refused = !r.push(piece) || refused;
        assert.equal(r.bareCr, bare, `split at ${a}, ${b}`);
        assert.equal(refused, bare, `push() refuses: split at ${a}, ${b}`);
      }
    }
  });
}

test('a CR that ends a chunk is decided by the next one', () => {
  const r = new HeaderReader(1 << 20);
  assert.equal(r.push(Buffer.from('A: 1\r')), true);
  assert.equal(r.push(Buffer.from('\nB: 2\r')), true);
  assert.equal(r.push(Buffer.from('C: 3\r\n\r\n')), false);
  assert.equal(r.bareCr, true);
});

let server: TestServer;

before(async () => {
  server = await startTestServer({
    config: PLAIN_MX_CONFIG,
    // The script strips what clients may not set; the spool must never hold a client's X-Trusted.
    scripts: { 'data.ts': 'export default () => accept({ headers: [{ op: "remove", name: "X-Trusted" }] });' },
  });
});
after(() => server?.stop());

async function send(c: SmtpTestClient, message: string): Promise<{ code: number; text: string }> {
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.socket.write(`${message}.\r\n`);
  return c.read(60_000);
}

test('over SMTP: a bare CR in the header section is refused after the dot (554 5.6.0), nothing spooled; the session goes on', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  for (const message of ['Subject: a\rX-Trusted: yes\r\n\r\nbody\r\n', 'X: a\r\r\nX-Trusted: yes\r\n\r\nbody\r\n']) {
    const r = await send(c, message);
    assert.equal(r.code, 554, r.text);
    assert.match(r.text, /^554 5\.6\.0 Message header section contains a bare CR/);
  }
  // A bare CR in the body is taken as it is.
  const ok = await send(c, 'Subject: fine\r\nX-Trusted: yes\r\n\r\nbody\rX-Trusted: body text\r\n');
  assert.equal(ok.code, 250, ok.text);
  const id = /queued as (\S+)/.exec(ok.text)![1]!;
  const { message } = await server.runtime.spool.readForDelivery(id);
  const text = message.toString('latin1');
  assert.doesNotMatch(text.slice(0, text.indexOf('\r\n\r\n')), /X-Trusted/i, 'the client\'s header was removed');
  await c.quit();
  assert.equal((await readdir(server.runtime.spool.incomingDir)).length, 0, 'nothing left in incoming/');
  const refusals = server.logs.filter((l) => l.decision === 'reject' && l.code === 554);
  assert.equal(refusals.length, 2);
  assert.match(String(refusals[0]!.reason), /bare CR/);
});
