// A refusal at DATA names the transaction's recipients: all of them (up to maxRecipients, each twice) made a
// line of tens of KB, past the 4096 bytes a pipe writes at once (the processes of `postern serve` share stdout).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

test('a DATA refusal of a 100-recipient message: the line names the first 5 and the count, under 4096 bytes', async () => {
  const s = await startTestServer({
    config: configYaml({ localDomains: ['example.test'], listeners: [testListener('mx', { tls: { mode: 'none' } })] }),
    scripts: { 'data.ts': 'export default () => reject();' },
  });
  try {
    const to = Array.from({ length: 100 }, (_, i) => `${'r'.repeat(60)}${i}@example.test`);
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    const r = await c.sendMail('a@example.net', to);
    assert.equal(r.code, 550, r.text);
    await c.quit();
    await until('the decision line', () => s.logs.some((l) => l.decision === 'reject'));
    const line = s.logs.find((l) => l.decision === 'reject')!;
    assert.equal(line.stage, 'END-OF-MESSAGE');
    assert.ok(Buffer.byteLength(JSON.stringify(line)) < 4096, `${Buffer.byteLength(JSON.stringify(line))} bytes`);
    assert.equal(line.nrcpt, 100);
    assert.equal(line.to, to.slice(0, 5).join(','));
    assert.match(String(line.msg), new RegExp(` to=<${to.slice(0, 5).join(',')}> nrcpt=100 `));
  } finally { await s.stop(); }
});
