// The admin listener of `postern serve`: one per server, in the supervisor, whose /metrics sums every
// process's counters (scraped with curl), and whose /readyz and /status see the whole server; one address
// gets at most admin.maxConnectionsPerIp connections.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { ADMIN_MADE_ROOM, assertAdminCapMakesRoom } from '../helpers/http-per-address.ts';

const curl = promisify(execFile);
let c: ClusterProcess | undefined;
after(() => c?.stop());

test('with 2 workers, /metrics counts the connections and messages of both, /readyz and /status answer for the server', async () => {
  c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
localDomains: [example.test]
admin: { listen: "127.0.0.1:{PORT:admin}", maxConnectionsPerIp: 3 }
listeners:
  - { name: mx, listen: "127.0.0.1:{PORT:mx}", limits: { greetingDelayMs: 0 } }
`,
  });
  const base = `http://127.0.0.1:${c.port('admin')}`;
  const metric = async (sample: string): Promise<number> => {
    const { stdout } = await curl('curl', ['-sf', `${base}/metrics`]);
    const line = stdout.split('\n').find((l) => l.startsWith(`${sample} `));
    return line ? Number(line.slice(sample.length + 1)) : 0;
  };
  const before = await metric('postern_messages_accepted_total{listener="mx"}');
  // Enough connections that both workers serve some (the supervisor spreads them).
  const clients = await Promise.all(Array.from({ length: 6 }, () => SmtpTestClient.connect(c!.port('mx'))));
  for (const client of clients) {
    await client.hello();
    assert.equal((await client.sendMail('a@example.net', ['b@example.test'])).code, 250);
  }
  await Promise.all(clients.map((client) => client.quit()));
  // The workers' lines come through their pipe, the replies through the sockets: the last may not be read yet.
  const spooledLines = await c.waitFor('the six messages logged', () => {
    const lines = c!.logs.filter((l) => String(l.msg).includes('(message spooled)'));
    return lines.length >= 6 && lines;
  });
  const served = new Set(spooledLines.map((l) => l.pid));
  assert.equal(served.size, 2, 'both workers took messages');
  assert.equal(await metric('postern_messages_accepted_total{listener="mx"}') - before, 6, 'the sum over the workers');
  assert.ok(await metric('postern_smtp_connections_total{listener="mx"}') >= 6);
  assert.ok(await metric('postern_config_generation') >= 1, 'a gauge is not summed over processes');
  // The restart counter's series exist before any restart: increase() in the documented alert sees the first one.
  const scrape = (await curl('curl', ['-sf', `${base}/metrics`])).stdout;
  for (const role of ['worker', 'queue']) {
    assert.match(scrape, new RegExp(`^postern_worker_restarts_total\\{role="${role}"\\} 0$`, 'm'), `${role} restarts at 0 before any restart`);
  }

  const ready = JSON.parse((await curl('curl', ['-sf', `${base}/readyz`])).stdout) as { ready: boolean; checks: Record<string, { ok: boolean }> };
  assert.equal(ready.ready, true, JSON.stringify(ready));
  assert.deepEqual(Object.keys(ready.checks).sort(), ['listeners', 'lock', 'processes', 'reload', 'spool', 'store']);
  // A spool folder that cannot be written (here: gone) makes the server not ready, until it is back.
  const spool = join(c.dataDir, 'spool');
  await rename(spool, `${spool}.away`);
  try {
    const notReady = await curl('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', `${base}/readyz`]);
    assert.equal(notReady.stdout, '503');
    const body = JSON.parse((await curl('curl', ['-s', `${base}/readyz`])).stdout) as { checks: { spool: { ok: boolean; detail: string } } };
    assert.equal(body.checks.spool.ok, false);
    assert.match(body.checks.spool.detail, /ENOENT/);
  } finally {
    await rename(`${spool}.away`, spool);
  }
  assert.equal((JSON.parse((await curl('curl', ['-sf', `${base}/readyz`])).stdout) as { ready: boolean }).ready, true);
  const status = JSON.parse((await curl('curl', ['-sf', `${base}/status`])).stdout) as { cluster: { processes: Array<{ role: string; ready: boolean }> } };
  assert.deepEqual(status.cluster.processes.map((p) => p.role).sort(), ['queue', 'worker', 'worker']);
  assert.equal((await curl('curl', ['-sf', `${base}/healthz`])).stdout, 'ok\n');

  // The supervisor's listener takes admin.maxConnectionsPerIp.
  await assertAdminCapMakesRoom(c.port('admin'), { limit: 3, address: '127.0.2.1', other: '127.0.2.2', path: '/healthz' });
  assert.equal(c.logs.filter((l) => l.msg === ADMIN_MADE_ROOM && l.client === '127.0.2.1').length, 1);
});
