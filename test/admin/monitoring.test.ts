// What a monitoring setup needs beyond the traffic counters, scraped with curl: /readyz fails while the disk
// is below the spool's floor (every new message is refused then); refusals are counted by their reason; a
// Redis outage shows as a gauge; and under `postern serve` a reload counts once (not once per process), a
// replaced worker counts as a restart, and the fence count is exposed.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';
import { REPLIES } from '../../engine/smtp/replies.ts';

const curl = promisify(execFile);
const cleanup: Array<() => Promise<void>> = [];
after(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => undefined);
});

const scrape = scrapeMetrics;

async function readyz(port: number): Promise<{ code: string; body: { ready: boolean; checks: Record<string, { ok: boolean; detail?: string }> } }> {
  const { stdout } = await curl('curl', ['-s', '-w', '\n%{http_code}', `http://127.0.0.1:${port}/readyz`]);
  const nl = stdout.lastIndexOf('\n');
  return { code: stdout.slice(nl + 1), body: JSON.parse(stdout.slice(0, nl)) };
}

test('below spool.minFreeBytes /readyz answers 503 with the reason, and the refusals it causes are counted by reason', async () => {
  const s: TestServer = await startTestServer({
    config: configYaml({ admin: { listen: '127.0.0.1:0' }, spool: { minFreeBytes: Number.MAX_SAFE_INTEGER }, listeners: [testListener('mx')] }),
  });
  cleanup.push(() => s.stop());
  const port = s.admin!.address.port;
  const ready = await readyz(port);
  assert.equal(ready.code, '503');
  assert.equal(ready.body.checks.spool!.ok, false);
  assert.match(String(ready.body.checks.spool!.detail), /below spool\.minFreeBytes \(9007199254740991\): new mail is refused \(452 4\.3\.1\)/);

  const sample = 'postern_smtp_refusals_total{listener="mx",stage="MAIL",class="4xx",reason="spool.minFreeBytes"}';
  const scraped = await scrape(port);
  const before = scraped.get(sample) ?? 0;
  // /readyz's checks in /metrics, before any client is refused: what an alert needs.
  assert.equal(scraped.get('postern_readiness_check_passed{check="spool"}'), 0);
  assert.equal(scraped.get('postern_readiness_check_passed{check="listeners"}'), 1);
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<a@example.net>')).text, '452 4.3.1 Insufficient system storage');
  assert.equal((await c.command('FOO')).code, 500);
  await c.quit();
  const after = await scrape(port);
  assert.equal((after.get(sample) ?? 0) - before, 1);
  assert.ok((after.get(`postern_smtp_refusals_total{listener="mx",stage="UNKNOWN",class="5xx",reason="${REPLIES.commandNotRecognized.reason}"}`) ?? 0) >= 1, 'an unknown command, under the catalogue\'s reason');
});

test('a Redis outage shows as postern_store_unreachable 1, and 0 again once it is back', { skip: needsRedis().skip }, async () => {
  const redis: TestRedis = await startRedis();
  cleanup.push(() => redis.stop());
  const s = await startTestServer({
    config: configYaml({ admin: { listen: '127.0.0.1:0' }, store: { redis: { url: redis.url, timeoutMs: 2000 } }, sandbox: { timeoutMs: 5000 }, listeners: [testListener('mx')] }),
  });
  cleanup.push(() => s.stop());
  const port = s.admin!.address.port;
  const gauge = async (): Promise<number | undefined> => (await scrape(port)).get('postern_store_unreachable');
  assert.equal(await gauge(), 0);
  await redis.stop();
  await until('the outage is seen', async () => (await gauge()) === 1, { timeoutMs: 30_000 });
  await redis.start();
  await until('Redis is back', async () => (await gauge()) === 0, { timeoutMs: 30_000 });
});

test('postern serve: one reload counts once, not once per process; a killed worker counts as a restart; fences are exposed', { timeout: 180_000 }, async () => {
  // One worker: with the queue process, still two processes that reload the one edit.
  const c: ClusterProcess = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
admin: { listen: "127.0.0.1:{PORT:admin}" }
listeners:
  - { name: mx, listen: "127.0.0.1:{PORT:mx}", reverseDns: false, limits: { greetingDelayMs: 0 } }
`,
  });
  cleanup.push(() => c.stop());
  const port = c.port('admin');
  await workerPid(c, 0);
  const before = await scrape(port);
  assert.equal(before.get('postern_fenced_scripts'), 0);
  assert.equal(before.get('postern_reloads_total{result="ok"}') ?? 0, 0);

  const config = join(c.dir, 'postern.yaml');
  await writeFile(config, (await readFile(config, 'utf8')).replace('localDomains: [example.test]', 'localDomains: [example.test, example.org]'));
  // Every process has reloaded (the status's generations all at 2).
  await c.waitFor('every process on generation 2', async () => {
    const { reload } = await c.cluster();
    const all = Object.values(reload.processes);
    return all.length === 2 && all.every((p) => p.generation === 2) && reload.converged;
  });
  assert.equal((await scrape(port)).get('postern_reloads_total{result="ok"}'), 1, 'two processes reloaded one edit: one reload');

  const pid = await workerPid(c, 0);
  process.kill(pid, 'SIGKILL');
  await c.waitFor('worker 0 replaced', async () => {
    const p = (await c.cluster()).processes.find((x) => x.role === 'worker' && x.index === 0);
    return p?.ready && p.pid !== pid && p.restarts === 1;
  });
  const after = await scrape(port);
  assert.equal(after.get('postern_worker_restarts_total{role="worker"}'), 1);
  assert.equal(after.get('postern_worker_restarts_total{role="queue"}') ?? 0, 0);
});
