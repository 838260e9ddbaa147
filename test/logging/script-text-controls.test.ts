// A script may log (or throw with) what a client sent: a Subject with U+009B (a terminal's CSI when it takes C1
// controls in UTF-8, as xterm does under `tail -f`) or a bidi override. JSON escapes C0 controls only: such
// characters are written as \u{…} in the script's log line and in the line of its failure.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

const HOSTILE = 'hi \u009b2J \u0085 \u202Eevil\u2028next';
const UNSHOWABLE = /[\u0080-\u009f\u202a-\u202e\u2066-\u2069\u2028\u2029]/;

test('a script logging and throwing a client\'s Subject: no C1 control, bidi override or line separator in the lines', async () => {
  const s = await startTestServer({
    config: configYaml({ localDomains: ['example.test'], listeners: [testListener('mx', { tls: { mode: 'none' } })] }),
    scripts: {
      'data.ts': `export default (ctx: DataContext) => {
  const subject = ctx.data.headers.find(([n]) => n.toLowerCase() === 'subject')?.[1] ?? '';
  log('subject:', subject);
  if (subject.startsWith('throw')) throw new Error('bad subject ' + subject);
};`,
    },
  });
  try {
    for (const subject of [HOSTILE, `throw ${HOSTILE}`]) {
      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.hello();
      assert.equal((await c.command('MAIL FROM:<a@example.net> SMTPUTF8')).code, 250);
      assert.equal((await c.command('RCPT TO:<b@example.test>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      const r = await c.command(`Subject: ${subject}\r\n\r\nhi\r\n.`);
      assert.equal(r.code, subject.startsWith('throw') ? 451 : 250, r.text);
      await c.quit();
    }
    await until('the script\'s failure line', () => s.logs.some((l) => String(l.msg).startsWith('policy script data failed')));
    const lines = s.logs.filter((l) => String(l.msg).startsWith('subject:') || String(l.msg).startsWith('policy script data failed'));
    assert.equal(lines.length, 3, JSON.stringify(lines));
    for (const l of lines) {
      assert.doesNotMatch(JSON.stringify(l), UNSHOWABLE, JSON.stringify(l));
      assert.match(String(l.msg), /hi \\u\{9b\}2J \\u\{85\} \\u\{202e\}evil\\u\{2028\}next/);
    }
    const failure = lines.find((l) => String(l.msg).startsWith('policy script'))!;
    assert.match(String(failure.err), /\\u\{9b\}2J/);
  } finally { await s.stop(); }
});
