// A client that leaves (resets) while Postern is still deciding about its command: the decision comes after the
// client is gone. Its refusal reached nobody: the decision line says so and postern_smtp_refusals_total, which
// counts what clients got, does not count it. A message whose client left before its end was answered is not
// kept: no 250 reached the client, which will send it again (kept, it was delivered twice, and logged and
// counted as accepted by a client that saw no acceptance).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, PLAIN_MX_CONFIG, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { closed, until } from '../helpers/wait.ts';
import { registry } from '../../engine/metrics/metrics.ts';

let s: TestServer;
// The scripts take their time (on an isolate thread: the event loop reads the client's reset meanwhile).
const SLOW = 'log("deciding"); const t = Date.now(); while (Date.now() - t < 1500) { /* deciding */ }';
before(async () => {
  s = await startTestServer({
    config: `${PLAIN_MX_CONFIG}sandbox: { timeoutMs: 10000, fastPathMs: 0 }\n`,
    scripts: {
      'rcptto.ts': `export default (ctx: RcptToContext) => { if (ctx.address.localPart === 'slow-reject') { ${SLOW} return reject(); } };`,
      'data.ts': `export default (ctx: DataContext) => { if (ctx.data.headers.some(([n, v]) => n === 'Subject' && v === 'slow')) { ${SLOW} } };`,
    },
  });
});
after(() => s.stop());

async function counter(name: string, labels: string): Promise<number> {
  const text = await registry.getSingleMetricAsString(name);
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

/** The client resets its connection (RST: it can read no reply). */
async function reset(c: SmtpTestClient): Promise<void> {
  c.socket.resetAndDestroy();
  await closed(c.socket);
}

test('a refusal decided after the client left: its line says it was not sent, and it is not counted as a refusal', { timeout: 60_000 }, async () => {
  const REFUSALS = ['postern_smtp_refusals_total', 'listener="mx",stage="RCPT",class="5xx",reason="script rcptto: reject"'] as const;
  const VERDICTS = ['postern_script_verdicts_total', 'listener="mx",hook="rcptto",verdict="reject",generation="1",source="smtp"'] as const;
  const refusalsBefore = await counter(...REFUSALS);
  const verdictsBefore = await counter(...VERDICTS);
  const mark = s.logs.length;
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<a@sender.example>')).code, 250);
  c.write('RCPT TO:<slow-reject@example.com>');
  await until('the script deciding', () => s.logs.slice(mark).some((l) => l.msg === 'deciding'));
  await reset(c);
  await until('the script decided', async () => (await counter(...VERDICTS)) === verdictsBefore + 1, { timeoutMs: 30_000 });
  await until('the decision line', () => s.logs.slice(mark).some((l) => l.decision === 'reject'));
  const lines = s.logs.slice(mark).filter((l) => l.decision !== undefined);
  assert.equal(lines.length, 1, JSON.stringify(lines));
  assert.equal(lines[0]!.sent, false, 'the line says the refusal was not sent');
  assert.match(String(lines[0]!.msg), /^\w+: reject: RCPT from .*: 550 5\.7\.1 .*\(not sent: the client had left\)$/);
  assert.equal(await counter(...REFUSALS), refusalsBefore, 'not a refusal any client got');
});

test('a message whose client left before its end was answered: not kept, not logged or counted as accepted', { timeout: 60_000 }, async () => {
  const ACCEPTED = ['postern_messages_accepted_total', 'listener="mx"'] as const;
  const acceptedBefore = await counter(...ACCEPTED);
  const mark = s.logs.length;
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<a@sender.example>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.write('Subject: slow\r\n\r\nhello\r\n.');
  await until('the script deciding', () => s.logs.slice(mark).some((l) => l.msg === 'deciding'));
  await reset(c);
  await until('the intake gave up on the message', () => s.logs.slice(mark).some((l) => /the client left before its message was acknowledged: not kept/.test(String(l.msg))), { timeoutMs: 30_000 });
  assert.equal(s.logs.slice(mark).filter((l) => / accepted from=/.test(String(l.msg))).length, 0, 'no accepted line');
  assert.equal(await counter(...ACCEPTED), acceptedBefore, 'not counted as accepted');
  // The spool keeps no message: a client that sends it again gets it delivered once.
  const sent = await SmtpTestClient.connect(s.port('mx'));
  await sent.hello();
  assert.equal((await sent.sendMail('a@sender.example', ['b@example.com'])).code, 250);
  await sent.quit();
  assert.equal(await counter(...ACCEPTED), acceptedBefore + 1);
});
