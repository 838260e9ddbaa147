// The tests' SMTP client is strict about recipients: a RCPT refused (here a script failure's 451, as a script
// timeout under load gives) fails the send unless the test expected it, so no test silently sends to fewer
// recipients than it meant. The refusals a test expects come back for it to assert.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, submitMessage } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';

let s: TestServer;
before(async () => {
  s = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], listeners: [testListener('mx', { tls: { mode: 'none' } })] }),
    scripts: { 'rcptto.js': 'export default function (ctx) { if (ctx.address.localPart === "broken") throw new Error("script failure"); }\n' },
  });
});
after(() => s.stop());

async function greeted(): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.hello();
  return c;
}

const queueId = (text: string): string => /queued as ([0-9a-z]+)/.exec(text)![1]!;

test('a refused RCPT fails the send, naming the recipient and the reply, and no message is sent', async () => {
  const c = await greeted();
  await assert.rejects(c.sendMail('a@sender.example', ['one@example.com', 'broken@example.com', 'two@example.com']),
    /^Error: RCPT TO:<broken@example\.com> refused: 451 4\.3\.0 /);
  assert.ok(!c.transcript.includes('C: DATA'), c.transcript.join('\n'));
  await c.quit();
  await assert.rejects(submitMessage(s.port('mx'), 'a@sender.example', ['broken@example.com', 'one@example.com']),
    /RCPT TO:<broken@example\.com> refused: 451 /);
});

test('the refusals a test names are returned; the message goes to the others', async () => {
  const c = await greeted();
  const r = await c.sendMail('a@sender.example', ['one@example.com', 'broken@example.com', 'two@example.com'], undefined,
    { refusedOk: ['broken@example.com'] });
  await c.quit();
  assert.equal(r.code, 250, r.text);
  assert.deepEqual(r.refused.map((f) => [f.rcpt, f.reply.code]), [['broken@example.com', 451]]);
  assert.deepEqual((await s.runtime.spool.readEnvelope(queueId(r.text))).recipients.map((x) => x.address), ['one@example.com', 'two@example.com']);
});

test('a recipient named as refused but accepted fails the send', async () => {
  const c = await greeted();
  await assert.rejects(c.sendMail('a@sender.example', ['one@example.com'], undefined, { refusedOk: ['one@example.com'] }),
    /RCPT TO:<one@example\.com> accepted, expected a refusal/);
  await c.quit();
});

test('refusedOk: true takes any refusal; when every recipient is refused the last RCPT reply is returned', async () => {
  const c = await greeted();
  const r = await c.sendMail('a@sender.example', ['broken@example.com'], undefined, { refusedOk: true });
  assert.match(r.text, /^451 4\.3\.0 /);
  assert.deepEqual(r.refused.map((f) => f.rcpt), ['broken@example.com']);
  assert.ok(!c.transcript.includes('C: DATA'));
  await c.quit();
});
