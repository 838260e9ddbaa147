// A postern.yaml with a huge list on one line: `localDomains: [$(paste -sd, domains)]`, a hosting provider's
// 100,000 domains (2 MB). The YAML parse is one synchronous call, run by every process at a reload: 2 to 5 s on
// each event loop at once, past the worker's 1 s watchdog, which killed the worker and the queue process (SIGKILL,
// restarts 0 -> 1), and again as they started. A configuration of more than MAX_CONFIG_ITEMS lines and list items
// is now refused before it is parsed: the error names the file and its fullest line, and the running generation
// answers, in the same worker. A real `postern serve` and SMTP client.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, ONE_WORKER, workerPid } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

test('postern serve: a postern.yaml with a list of 100,000 items on one line is refused with its file and line; no process is killed by its watchdog', { timeout: 300_000 }, async () => {
  const c = await startCluster({ config: ONE_WORKER });
  try {
    const file = join(c.dir, 'postern.yaml');
    await c.waitFor('every process on the first generation', async () => {
      const r = (await c.cluster()).reload;
      return Object.keys(r.processes).length === 2 && r.converged && r;
    });
    const pid = await workerPid(c, 0);

    const domains = Array.from({ length: 100_000 }, (_, i) => `d${i}.example.test`).join(', ');
    const text = (await readFile(file, 'utf8')).replace('localDomains: [example.test]', `localDomains: [example.test, ${domains}]`);
    const line = text.split('\n').findIndex((l) => l.startsWith('localDomains:')) + 1;
    await writeFile(`${file}.new`, text);
    await rename(`${file}.new`, file);
    // Or a process restarted: the code before this change had its watchdog kill them.
    const refused = await c.waitFor('the configuration refused by every process (or a process restarted)', async () => {
      const { reload: r, processes } = await c.cluster();
      return (processes.some((p) => p.restarts > 0) || (Object.keys(r.processes).length === 2 && Object.values(r.processes).every((p) => p.refused))) && r;
    }, 120_000);

    const status = await c.cluster();
    assert.deepEqual(status.processes.map((p) => p.restarts), status.processes.map(() => 0), 'no process restarted');
    assert.equal(await workerPid(c, 0), pid, 'the same worker');
    assert.equal(c.logs.filter((l) => /hang|not beaten|watchdog/i.test(String(l.msg))).length, 0, 'no watchdog line');
    for (const p of Object.values(refused.processes)) assert.match(String(p.lastError), new RegExp(`postern\\.yaml:${line}:.*\\(line ${line} has 100001 items\\)`));
    const s = await SmtpTestClient.connect(c.port('in'));
    await s.read(30_000);
    assert.equal((await s.command('EHLO client.test', 30_000)).code, 250, 'the running generation answers');
    s.destroy();
  } finally {
    await c.stop();
  }
});
