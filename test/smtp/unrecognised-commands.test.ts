// Unrecognised commands are refusals like any other: limits.maxErrors bounds them, an accepted message starts the
// count again, and the client that reaches it gets the documented `421 4.7.0 <hostname> Error: too many errors`
// with a decision line naming limits.maxErrors. smtp-server's own count of them (fixed at 10, over the whole
// connection) closed the connection first with `421 4.4.2 Error: too many unrecognized commands`, whatever
// maxErrors said (20 by default). Real server, real sockets.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';

let s: TestServer;
before(async () => {
  s = await startTestServer({
    config: configYaml({ hostname: 'mx.test', localDomains: ['example.test'], listeners: [testListener('mx', { tls: { mode: 'none' }, limits: { maxErrors: 15 } })] }),
  });
});
after(() => s?.stop());

const decisions = (from: number): Array<Record<string, unknown>> => s.logs.slice(from).filter((l) => l.decision !== undefined);

test('14 unrecognised commands under maxErrors 15 are each refused and the session goes on; the 15th closes it with 421 4.7.0', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.read();
  await c.command('EHLO client.example');
  for (let i = 1; i < 15; i++) assert.equal((await c.command(`FOO${i}`)).code, 500, `command ${i}`);
  assert.equal((await c.command('NOOP')).code, 250, 'still open');
  assert.equal((await c.command('FOO15')).code, 500); // the 15th refusal, then the 421 it reached
  assert.equal((await c.read()).text, '421 4.7.0 mx.test Error: too many errors');
  assert.ok(await c.waitClosed());
  const lines = decisions(mark);
  assert.equal(lines.length, 16, 'one line per refusal (15 × 500, the 421)');
  assert.equal(lines.at(-1)!.reason, 'limits.maxErrors');
});

test('an accepted message starts the count again: 9 unrecognised commands, a message, 9 more, and the session is still open', { timeout: 60_000 }, async () => {
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.read();
  await c.command('EHLO client.example');
  for (let i = 0; i < 9; i++) assert.equal((await c.command('FOO')).code, 500);
  for (const line of ['MAIL FROM:<a@sender.example>', 'RCPT TO:<u@example.test>']) assert.equal((await c.command(line)).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.socket.write('Subject: between\r\n\r\nbody\r\n.\r\n');
  assert.equal((await c.read()).code, 250);
  for (let i = 0; i < 9; i++) assert.equal((await c.command('FOO')).code, 500, `command ${i + 1} after the message`);
  assert.equal((await c.command('NOOP')).code, 250, 'still open');
  await c.quit();
});

// sendmail's WIZ, SHELL and KILL: smtp-server answered them itself with jokes (`500 Can not kill Mom`, `This incident
// will be reported`), and `WIZ <anything>` with `200 Please pass, oh mighty wizard`: no refusal, no decision line, and
// counted by neither maxErrors nor maxJunkCommands, so a client could hold its connection with it for ever.
test('WIZ, SHELL and KILL are unknown commands: 500 5.5.2, a decision line each, counted to maxErrors', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.read();
  await c.command('EHLO client.example');
  const commands = [...Array.from({ length: 13 }, () => 'WIZ secret'), 'SHELL', 'KILL'];
  for (const command of commands) assert.equal((await c.command(command)).text, '500 5.5.2 Error: command not recognized', command);
  assert.equal((await c.read()).text, '421 4.7.0 mx.test Error: too many errors', 'the 15th refusal reached maxErrors');
  assert.ok(await c.waitClosed());
  const lines = decisions(mark);
  assert.equal(lines.length, 16);
  for (const line of lines.slice(0, 15)) {
    assert.deepEqual([line.stage, line.code, line.enhanced, line.reply, line.reason], ['UNKNOWN', 500, '5.5.2', 'Error: command not recognized', 'a command not recognized (RFC 5321 §4.2.4)']);
  }
});
