// A shadow candidate's log() lines have a per-second budget of their own (engine/sandbox/log-budget.ts), as its
// counters have keys of their own: a candidate that logs a lot (what a candidate under trial tends to do) spent
// the budget all scripts of the process shared, and the live scripts' lines were dropped for the rest of each
// second — here most of the 24 lines a live rcptto script logs, one per recipient. Real SMTP; the server's log.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { metrics } from '../../engine/metrics/metrics.ts';

const RECIPIENTS = 24;
const settled = async (): Promise<number> => (await metrics.shadowCalls.get()).values.reduce((sum, v) => sum + v.value, 0);

test('a shadow script that logs its budget away leaves the live scripts\' log lines alone', async () => {
  const shadowDir = await mkdtemp(join(tmpdir(), 'postern-shadow-'));
  // Each call close to its own bound (262144 characters), of zero-width spaces: nine characters each as written, so
  // one call spends a second's budget, however slow the machine.
  await writeFile(join(shadowDir, 'rcptto.ts'), `export default function (ctx) {
    const line = 'shadow ' + '\\u200b'.repeat(250);
    for (let i = 0; i < 1000; i++) log(line);
  }`);
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], listeners: [testListener('mx', { shadowScripts: shadowDir, limits: { maxRecipients: 100 } })] } as never),
    scripts: { 'rcptto.ts': `export default function (ctx) { log('live ' + ctx.address.localPart); }` },
  });
  try {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    for (let i = 0; i < RECIPIENTS; i++) {
      assert.equal((await c.command(`RCPT TO:<r${i}@example.com>`)).text, '250 2.1.5 Accepted');
      // One shadow call at a time: none is skipped for want of a free shadow isolate.
      await until(`shadow call ${i + 1} settled`, async () => (await settled()) >= i + 1);
    }
    await c.quit();
    const live = server.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('live ')).map((l) => l.msg);
    assert.deepEqual(live, Array.from({ length: RECIPIENTS }, (_, i) => `live r${i}`), 'every live line logged');
    const shadowDropped = /script log lines \(\d+ characters\) dropped: shadow scripts of this process may log/;
    await until('the shadow\'s own budget spent (the case this test is about)', () => server.logs.some((l) => shadowDropped.test(String(l.msg))));
  } finally {
    await server.stop();
    await rm(shadowDir, { recursive: true, force: true });
  }
});
