// "Why was my mail refused?": every refusal path of the lifecycle leaves one info line with the client
// address, the stage, the reply and the reason (built-in rule, limit or script), Postfix-style.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { registry } from '../../engine/metrics/metrics.ts';
import { REPLIES } from '../../engine/smtp/replies.ts';
import { until } from '../helpers/wait.ts';

let s: TestServer;
before(async () => {
  s = await startTestServer({
    config: configYaml({
      hostname: 'mx.test',
      localDomains: ['example.test'],
      listeners: [
        testListener('mx', { limits: { maxMessageSize: 200, maxConnectionsPerIp: 3, maxRecipients: 2 } }),
        testListener('sub', { auth: { mechanisms: ['PLAIN'], required: true } }),
      ],
    }),
    scripts: {
      'mailfrom.ts': `export default function mailfrom(ctx: MailFromContext): Verdict | void {
  if (ctx.address.address === 'spammer@bad.example') return reject('Go away');
  if (ctx.address.address === 'later@slow.example') return defer('Try later');
  if (ctx.address.address === 'bug@example.net') throw new Error('oops');
}`,
    },
  });
});
after(() => s?.stop());

function refusals(): Array<Record<string, unknown>> {
  return s.logs.filter((l) => l.decision === 'reject' || l.decision === 'defer');
}

async function lastRefusal(count: number): Promise<Record<string, unknown>> {
  // The line is written before the reply leaves, so it is there once the client has the reply.
  const lines = refusals();
  assert.equal(lines.length, count, JSON.stringify(lines.at(-1)));
  return lines.at(-1)!;
}

test('relay denied, script reject/defer/failure, auth required, size limit and per-IP limit each log one line with client, stage, reply and reason', async () => {
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.hello({ name: 'client.example' });
  assert.equal((await c.command('MAIL FROM:<someone@example.net>')).code, 250);
  assert.equal((await c.command('RCPT TO:<victim@elsewhere.example>')).code, 554);
  let line = await lastRefusal(1);
  assert.equal(line.stage, 'RCPT');
  assert.equal(line.client, '127.0.0.1');
  assert.equal(line.code, 554);
  assert.match(String(line.reason), /relay rule/);
  assert.equal(line.to, 'victim@elsewhere.example');
  assert.equal(line.from, 'someone@example.net');
  assert.match(String(line.msg), /^\w+: reject: RCPT from [\w.-]+\[127\.0\.0\.1\]: 554 5\.7\.1 <victim@elsewhere\.example>: Relay access denied; from=<someone@example\.net> to=<victim@elsewhere\.example> proto=ESMTP helo=<client\.example>$/);
  assert.equal((await c.command('RSET')).code, 250);

  assert.equal((await c.command('MAIL FROM:<spammer@bad.example>')).code, 550);
  line = await lastRefusal(2);
  assert.equal(line.stage, 'MAIL');
  assert.equal(line.reason, 'script mailfrom: reject');
  assert.equal(line.reply, 'Go away');

  assert.equal((await c.command('MAIL FROM:<later@slow.example>')).code, 451);
  line = await lastRefusal(3);
  assert.equal(line.decision, 'defer');
  assert.equal(line.reason, 'script mailfrom: defer');

  assert.equal((await c.command('MAIL FROM:<bug@example.net>')).code, 451);
  line = await lastRefusal(4);
  assert.match(String(line.reason), /script mailfrom failed \(fail closed\)/);

  const big = await c.sendMail('someone@example.net', ['user@example.test'], `Subject: big\r\n\r\n${'x'.repeat(500)}\r\n`);
  assert.equal(big.code, 552);
  line = await lastRefusal(5);
  assert.equal(line.stage, 'END-OF-MESSAGE');
  assert.equal(line.reason, 'limits.maxMessageSize');
  assert.deepEqual([line.from, line.to], ['someone@example.net', 'user@example.test']);
  await c.quit();

  const sub = await SmtpTestClient.connect(s.port('sub'));
  await sub.hello();
  assert.equal((await sub.command('MAIL FROM:<someone@example.net>')).code, 530);
  line = await lastRefusal(6);
  assert.equal(line.reason, 'auth.required');
  assert.equal(line.listener, 'sub');
  await sub.quit();

  const held = await Promise.all([1, 2, 3].map(() => SmtpTestClient.connect(s.port('mx'))));
  for (const h of held) assert.equal((await h.read()).code, 220);
  const fourth = await SmtpTestClient.connect(s.port('mx'));
  assert.equal((await fourth.read()).code, 421);
  line = await lastRefusal(7);
  assert.equal(line.stage, 'CONNECT');
  assert.equal(line.reason, 'limits.maxConnectionsPerIp');
  for (const h of [...held, fourth]) h.destroy();
});

test("smtp-server's own refusals are logged like Postern's: the command as stage, the enhanced code the client saw, the setting behind them; and counted", async () => {
  // The connections the test before held must have left the per-IP count first.
  let c!: SmtpTestClient;
  await until('a connection under the per-IP limit again', async () => {
    c = await SmtpTestClient.connect(s.port('mx'));
    if ((await c.read()).code === 220) return true;
    c.destroy();
    return false;
  });
  const before = refusals().length;
  const counted = async (): Promise<number> => (await registry.getSingleMetric('postern_smtp_refusals_total')!.get()).values.reduce((n, v) => n + v.value, 0);
  const countedBefore = await counted();
  assert.equal((await c.command('EHLO client.example')).code, 250);
  assert.equal((await c.command('FOO bar')).text, '500 5.5.2 Error: command not recognized');
  assert.equal((await c.command('MAIL FROM:<someone@example.net>')).code, 250);
  for (const r of ['a', 'b']) assert.equal((await c.command(`RCPT TO:<${r}@example.test>`)).code, 250);
  assert.equal((await c.command('RCPT TO:<c@example.test>')).text, '452 4.5.3 Error: too many recipients');
  await c.quit();
  const sub = await SmtpTestClient.connect(s.port('sub'));
  await sub.hello();
  assert.equal((await sub.command('MAIL FROM:<someone@example.net>')).text, '530 5.7.0 Authentication required');
  await sub.quit();

  const lines = refusals().slice(before);
  assert.deepEqual(lines.map((l) => [l.stage, l.code, l.enhanced, l.reply, l.reason]), [
    ['UNKNOWN', 500, '5.5.2', 'Error: command not recognized', REPLIES.commandNotRecognized.reason],
    ['RCPT', 452, '4.5.3', 'Error: too many recipients', 'limits.maxRecipients'],
    ['MAIL', 530, '5.7.0', 'Authentication required', 'auth.required'],
  ]);
  // The recipient refused, as Postfix names it (not the two accepted before it).
  assert.match(String(lines[1]!.msg), /: defer: RCPT from [\w.-]+\[127\.0\.0\.1\]: 452 4\.5\.3 <c@example\.test>: Error: too many recipients; from=<someone@example\.net> to=<c@example\.test> proto=ESMTP helo=<client\.example> over_limit=1$/);
  assert.equal(await counted() - countedBefore, 3, 'postern_smtp_refusals_total counts them');
});

test('a MAIL or RCPT refused for its path (it does not parse, a quoted local part, a character no address carries, a bad parameter) names the path the client wrote, not the recipients accepted before it', async () => {
  let c!: SmtpTestClient;
  await until('a connection under the per-IP limit again', async () => {
    c = await SmtpTestClient.connect(s.port('mx'));
    if ((await c.read()).code === 220) return true;
    c.destroy();
    return false;
  });
  assert.equal((await c.command('EHLO client.example')).code, 250);
  const before = refusals().length;
  assert.equal((await c.command('MAIL FROM:<someone@example.net> SMTPUTF8')).code, 250);
  assert.equal((await c.command('RCPT TO:<accepted@example.test>')).code, 250);
  const long = `${'x'.repeat(3000)}@example.test`;
  const refused: Array<[string, number, string]> = [
    ['RCPT TO:<a@b@example.test>', 501, 'a@b@example.test'],
    ['RCPT TO:<"a b"@example.test>', 553, '"a\\u{20}b"@example.test'],
    // A path that never parsed writes no field of its own into the line's text: its blanks and brackets escaped.
    ['RCPT TO:<x@y;\tto=<ceo@example.test> nrcpt=1>', 501, 'x@y;\\u{9}to=\\u{3c}ceo@example.test'],
    ['RCPT TO:<c\u00adeo@example.test>', 553, 'c\\u{ad}eo@example.test'],
    ['RCPT TO:<d@example.test> ORCPT=rfc822;a+0Ab', 501, 'd@example.test'],
    ['RCPT TO:e@example.test', 501, 'e@example.test'],
    [`RCPT TO:<${long}>`, 501, `${long.slice(0, 256)}...`],
  ];
  for (const [command, code] of refused) assert.equal((await c.command(command)).code, code, command);
  assert.equal((await c.command('RSET')).code, 250);
  assert.equal((await c.command('MAIL FROM:<x@y@example.net>')).code, 501);
  await c.quit();

  const lines = refusals().slice(before);
  assert.equal(lines.length, refused.length + 1, JSON.stringify(lines.map((l) => l.msg)));
  refused.forEach(([command, code, written], i) => {
    const line = lines[i]!;
    assert.deepEqual([line.stage, line.code, line.to, line.nrcpt, line.from], ['RCPT', code, written, undefined, 'someone@example.net'], command);
    assert.ok(String(line.msg).endsWith(`; from=<someone@example.net> to=<${written}> proto=ESMTP helo=<client.example>`), `${command}: ${String(line.msg)}`);
  });
  const mail = lines.at(-1)!;
  assert.deepEqual([mail.stage, mail.code, mail.from], ['MAIL', 501, 'x@y@example.net']);
  assert.match(String(mail.msg), /: reject: MAIL from [\w.-]+\[127\.0\.0\.1\]: 501 5\.1\.7 <x@y@example\.net>: Error: Bad sender address syntax; from=<x@y@example\.net> proto=ESMTP helo=<client\.example>$/);
});
