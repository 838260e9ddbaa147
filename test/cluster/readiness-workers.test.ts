// /readyz of `postern serve` from the facts that decide whether connections are served: a worker at its
// open-file limit (a real `prlimit` on the running worker) accepts nothing. One of two so: the other serves,
// and the server stays ready (saying which worker is out); both so: connections wait unserved, and /readyz
// answers 503 until descriptors are free again.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { startCluster, workerPid, TWO_WORKERS, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';

const curl = promisify(execFile);
let c: ClusterProcess | undefined;
after(() => c?.stop());

type Readyz = { code: string; body: { ready: boolean; checks: Record<string, { ok: boolean; detail?: string }> } };

async function readyz(port: number): Promise<Readyz> {
  const { stdout } = await curl('curl', ['-s', '-w', '\n%{http_code}', `http://127.0.0.1:${port}/readyz`]);
  const nl = stdout.lastIndexOf('\n');
  return { code: stdout.slice(nl + 1), body: JSON.parse(stdout.slice(0, nl)) as Readyz['body'] };
}

/** Leaves `pid` room for a few more descriptors only (far under what a worker keeps free); returns the undo. */
function starve(pid: number): () => void {
  const [, soft, hard] = /Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))!;
  execFileSync('prlimit', ['--pid', String(pid), `--nofile=${readdirSync(`/proc/${pid}/fd`).length + 3}:${hard}`]);
  return () => execFileSync('prlimit', ['--pid', String(pid), `--nofile=${soft}:${hard}`]);
}

test('one worker of two at its open-file limit: ready (the other serves); both: 503, no worker takes connections; ready again once they have room', { timeout: 120_000 }, async () => {
  c = await startCluster({ config: `${TWO_WORKERS}admin: { listen: "127.0.0.1:{PORT:admin}" }\n` });
  const admin = c.port('admin');
  const pids = [await workerPid(c, 0), await workerPid(c, 1)];
  await until('ready', async () => (await readyz(admin)).code === '200', { timeoutMs: 30_000 });
  // Every check /readyz makes under postern serve is named where an alert on its gauge is written: the gauge's help
  // and docs/operations.md's row for it (the lock check was missing from both).
  const checks = Object.keys((await readyz(admin)).body.checks);
  const scrape = await curl('curl', ['-s', `http://127.0.0.1:${admin}/metrics`]);
  const help = /^# HELP postern_readiness_check_passed (.*)$/m.exec(scrape.stdout)![1]!;
  const row = /^\| `postern_readiness_check_passed` \|.*$/m.exec(readFileSync(new URL('../../docs/operations.md', import.meta.url), 'utf8'))![0];
  assert.deepEqual(checks.filter((name) => !new RegExp(`\\b${name}\\b`).test(help)), [], `checks the help does not name: ${help}`);
  assert.deepEqual(checks.filter((name) => !row.includes(`\`${name}\``)), [], 'checks docs/operations.md does not name');

  const undo0 = starve(pids[0]!);
  await c.waitFor('worker 0 full', () => c!.logs.some((l) => /worker 0 is near its open-file limit/.test(String(l.msg))));
  let r: Readyz | undefined;
  await until('/readyz names worker 0', async () => (r = await readyz(admin)).body.checks.processes?.detail !== undefined, { timeoutMs: 30_000, intervalMs: 100 });
  assert.equal(r!.code, '200', JSON.stringify(r!.body));
  assert.match(String(r!.body.checks.processes!.detail), /^worker 0 at its open-file limit; 1 of 2 workers take connections$/);
  const client = await SmtpTestClient.connect(c.port('in'));
  assert.equal((await client.read(30_000)).code, 220, 'worker 1 serves');
  await client.quit();

  const undo1 = starve(pids[1]!);
  await c.waitFor('worker 1 full', () => c!.logs.some((l) => /worker 1 is near its open-file limit/.test(String(l.msg))));
  await until('/readyz fails', async () => (r = await readyz(admin)).code === '503', { timeoutMs: 30_000, intervalMs: 100 });
  assert.equal(r!.body.checks.processes!.ok, false);
  assert.match(String(r!.body.checks.processes!.detail), /^no worker takes connections \(worker 0 at its open-file limit, worker 1 at its open-file limit\): they wait unserved$/);
  const scraped = await scrapeMetrics(admin);
  assert.equal(scraped.get('postern_readiness_check_passed{check="processes"}'), 0, 'the failing check in /metrics too');
  assert.equal(scraped.get('postern_readiness_check_passed{check="spool"}'), 1);

  undo0();
  undo1();
  await until('ready again', async () => (r = await readyz(admin)).code === '200' && r.body.checks.processes!.detail === undefined, { timeoutMs: 30_000, intervalMs: 100 });
});
