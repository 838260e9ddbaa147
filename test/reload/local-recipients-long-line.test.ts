// A recipient table written as one line: `echo $(cat list) > recipients`, a shell's word splitting joining a large
// provider's addresses with spaces. Its line was split into every word it holds before it was found to hold more
// than one address: seconds on the event loop of every process at once (2,000,000 addresses: ~5 s here), past the
// worker's 1 s watchdog, which killed each worker with its connections, at every reload. A line is now refused at
// its length, before any of it is read: the error names file and line, and the running table answers, in the same
// worker. A real `postern serve` and SMTP client.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, ONE_WORKER, workerPid } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

test('postern serve: a table of one overlong line is refused with its file and line; no process is killed by its watchdog', { timeout: 180_000 }, async () => {
  const c = await startCluster({ config: `${ONE_WORKER}localRecipients: ./recipients\n`, files: { recipients: 'alice@example.test\n' } });
  try {
    const table = join(c.dir, 'recipients');
    await c.waitFor('every process on the first table', async () => {
      const r = (await c.cluster()).reload;
      return Object.keys(r.processes).length === 2 && r.converged && r;
    });
    const pid = await workerPid(c, 0);

    const joined = Array.from({ length: 2_000_000 }, (_, i) => `user${i}.someone@example.test`).join(' ');
    await writeFile(`${table}.new`, `alice@example.test ${joined}\n`);
    await rename(`${table}.new`, table);
    const refused = await c.waitFor('the one-line table refused by every process', async () => {
      const r = (await c.cluster()).reload;
      return Object.values(r.processes).every((p) => p.refused) && r;
    }, 120_000);
    for (const p of Object.values(refused.processes)) assert.match(String(p.lastError), /recipients:1: localRecipients: /);

    const status = await c.cluster();
    assert.deepEqual(status.processes.map((p) => p.restarts), status.processes.map(() => 0), 'no process restarted');
    assert.equal(await workerPid(c, 0), pid, 'the same worker');
    assert.equal(c.logs.filter((l) => /hang|not beaten|watchdog/i.test(String(l.msg))).length, 0, 'no watchdog line');
    const s = await SmtpTestClient.connect(c.port('in'));
    await s.read(30_000);
    await s.command('EHLO client.test', 30_000);
    await s.command('MAIL FROM:<forged@innocent.example>', 30_000);
    assert.equal((await s.command('RCPT TO:<alice@example.test>', 30_000)).code, 250, 'the running table answers');
    assert.equal((await s.command('RCPT TO:<user7.someone@example.test>', 30_000)).code, 550);
    s.destroy();
  } finally {
    await c.stop();
  }
});
