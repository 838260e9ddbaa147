/**
 * The per-second budget of script log lines holds for what reaches the log, not for what the script passed to
 * log(). A line is written escaped: C1 controls, format characters (U+200B, bidi overrides) and lone surrogates as
 * `\u{200b}` (engine/logging/logger.ts scriptText), C0 controls as JSON's `\u0001`, and then JSON escapes the
 * backslash again: one character a script logs can be nine in the log. A script logging a client's text
 * (a header full of zero-width spaces) wrote 9 MiB a second where the budget promised 1 MiB.
 * Real SMTP; the server's own log lines, as written, are what is counted.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const CONFIG = `
localDomains: [example.com]
sandbox: { timeoutMs: 2000, isolates: 1 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`;

// 1000 lines of 250 characters: just within a call's own bound (262144 characters), each written 9 times as long.
const SCRIPTS = {
  'rcptto.ts': `export default function (ctx) {
    if (ctx.address.localPart !== 'escapes') return;
    const line = 'esc' + '\\u200b'.repeat(247);
    for (let i = 0; i < 1000; i++) log(line);
  }`,
};

let server: TestServer;
before(async () => { server = await startTestServer({ config: CONFIG, scripts: SCRIPTS }); });
after(async () => { await server.stop(); });

/** A log field's length as written in the JSON line (escapes included). */
const written = (value: unknown): number => JSON.stringify(value).length - 2;

test('lines whose characters are escaped in the log count as written against the per-second budget', async () => {
  const calls = 16;
  const isLine = (l: Record<string, unknown>): boolean => typeof l.msg === 'string' && l.msg.startsWith('esc');
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  assert.match((await c.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
  const start = performance.now();
  for (let i = 0; i < calls; i++) assert.match((await c.command('RCPT TO:<escapes@example.com>', 20_000)).text, /^250 /);
  const seconds = (performance.now() - start) / 1000;
  await c.quit();
  const lines = server.logs.filter(isLine);
  assert.ok(lines.length > 0, 'lines within the budget are logged');
  assert.match(String(lines[0]!.msg), /^esc(\\u\{200b\}){247}$/, 'the line as the log has it');
  const total = lines.reduce((sum, l) => sum + written(l.msg), 0);
  const perSecond = 1 << 20;
  // Each call would write 2.2 MiB: whatever the pace of the calls, the budget must have cut them.
  assert.ok(total <= perSecond * (Math.ceil(seconds) + 1), `${total} characters written in ${seconds.toFixed(1)} s by ${lines.length} lines`);
});
