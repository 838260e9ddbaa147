/**
 * A failure is logged for every failed call, and what the script threw is cut to 8192 characters (failure-text.test.ts)
 * — but it was cut as thrown, not as written: a message of zero-width spaces (a client's header quoted in an error)
 * is nine characters a piece in the log (`\\u{200b}`), and the line has it twice (`err` and the message), so one
 * failed call wrote 147 000 characters at error level, which no budget drops. Real SMTP; the server's log.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';

/** A log field's length as written in the JSON line (escapes included). */
const written = (value: unknown): number => JSON.stringify(value).length - 2;

test('the failure line holds what a script threw to 8192 characters as written, escapes included', async () => {
  const server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`,
    scripts: { 'rcptto.js': 'export default (ctx) => { throw new Error("bad: " + "\\u200b".repeat(8000) + "😀" + "x".repeat(100)); };' },
  });
  try {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@sender.example>')).code, 250);
    assert.equal((await c.command('RCPT TO:<bob@example.com>')).text, '451 4.3.0 Temporary policy failure, try again later');
    await c.quit();
    const isFailure = (l: Record<string, unknown>): boolean => String(l.msg).startsWith('policy script rcptto failed:');
    await until('the failure line', () => server.logs.some(isFailure));
    const line = server.logs.find(isFailure)!;
    assert.match(String(line.err), /^Error: bad: (\\u\{200b\})+/, 'the text as the log has it');
    assert.ok(written(line.err) <= 8192 + 100, `err: ${written(line.err)} characters written`);
    assert.ok(written(line.msg) <= 8192 + 200 + String(line.script).length, `msg: ${written(line.msg)} characters written`);
    assert.match(String(line.err), /… \(\d+ more characters\)$/, 'and says it was cut');
  } finally {
    await server.stop();
  }
});
