// Counters of `postern serve` never go down: /metrics sums the children's counters, and a child replaced (killed,
// hung and killed by the supervisor) or not answering in time took its counts with it, so the sum dropped — to
// Prometheus a counter reset, after which rate() and increase() count the whole remaining sum again as new.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, workerPid, greeted, spooled, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { needs } from '../helpers/example.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';

const curl = promisify(execFile);
// One server for the three tests (the second's queue process, killed, is not the first's worker; the third's script,
// added last, hangs only its own call). `fastPathMs: 0` is the third's: the first two run no script.
let shared: ClusterProcess | undefined;
const server = async (): Promise<ClusterProcess> =>
  (shared ??= await startCluster({ config: `${ONE_WORKER}admin: { listen: "127.0.0.1:{PORT:admin}" }\nsandbox: { fastPathMs: 0 }\n` }));
after(() => shared?.stop());

test('a worker killed, then one that does not answer: the summed counters and histograms keep their counts', { timeout: 180_000 }, async () => {
  const c = await server();
  const base = `http://127.0.0.1:${c.port('admin')}`;
  const sample = async (name: string): Promise<number> => {
    const { stdout } = await curl('curl', ['-sf', '--max-time', '60', `${base}/metrics`]);
    const line = stdout.split('\n').find((l) => l.startsWith(`${name} `));
    return line ? Number(line.slice(name.length + 1)) : 0;
  };
  const ACCEPTED = 'postern_messages_accepted_total{listener="in"}';
  const COMMITS = 'postern_spool_commit_duration_seconds_count';
  const send = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) await submitMessage(c.port('in'), 'a@example.net', ['b@example.test']);
  };

  const first = await workerPid(c, 0);
  await send(3);
  assert.equal(await sample(ACCEPTED), 3);
  assert.equal(await sample(COMMITS), 3);

  process.kill(first, 'SIGKILL');
  const second = await c.waitFor('the replacement worker', async () => {
    const p = (await c.cluster()).processes.find((x) => x.role === 'worker' && x.index === 0);
    return p?.ready && p.pid && p.pid !== first ? p.pid : null;
  });
  assert.equal(await sample(ACCEPTED), 3, 'the killed worker\'s messages still count');
  assert.equal(await sample(COMMITS), 3, 'and its histogram\'s observations');
  await send(2);
  assert.equal(await sample(ACCEPTED), 5);

  // Stopped (as a hung worker is, until the supervisor replaces it): it cannot answer the scrape.
  process.kill(second, 'SIGSTOP');
  try {
    assert.ok(await sample(ACCEPTED) >= 5, 'a worker that does not answer is counted as it last answered');
  } finally {
    try { process.kill(second, 'SIGCONT'); } catch { /* replaced meanwhile */ }
  }
  await c.waitFor('a ready worker', async () => (await c.cluster()).processes.find((x) => x.role === 'worker' && x.index === 0)?.ready);
  assert.ok(await sample(ACCEPTED) >= 5);
  // The merged scrape, with what the killed worker counted in it, is still one Prometheus accepts.
  if (!needs('promtool').skip) {
    const { stdout } = await curl('curl', ['-sf', `${base}/metrics`]);
    const r = spawnSync('promtool', ['check', 'metrics'], { input: stdout, encoding: 'utf8' });
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  }
});

test('the queue gauges while the queue process is down: the queue as it is, not 0', { timeout: 180_000 }, async () => {
  const q = await server();
  await workerPid(q, 0);
  await submitMessage(q.port('in'), 'a@example.net', ['b@example.test']); // no delivery section: it stays queued
  // With the first test's messages: every message this server took is queued still.
  const queued = (await spooled(q)).size;
  assert.ok(queued >= 1);
  const QUEUED = 'postern_queue_messages';
  const scrape = async (): Promise<number | undefined> => (await scrapeMetrics(q.port('admin'))).get(QUEUED);
  await q.waitFor('the messages in the gauge', async () => (await scrape()) === queued);
  const queueProcess = async (): Promise<{ pid: number | null; ready: boolean }> => (await q.cluster()).processes.find((p) => p.role === 'queue')!;
  // A scrape made while the queue process is down (killed, being replaced): killed again as soon as it is back.
  let during: number | undefined | null = null;
  for (let kills = 0; kills < 8 && during === null; kills++) {
    const pid = await q.waitFor('the queue process ready', async () => { const p = await queueProcess(); return p.ready && p.pid; });
    process.kill(pid, 'SIGKILL');
    await q.waitFor('the queue process down', async () => !(await queueProcess()).ready);
    const value = await scrape();
    if (!(await queueProcess()).ready) during = value;
  }
  assert.notEqual(during, null, 'a scrape while the queue process was down');
  assert.equal(during, queued, 'the messages are still queued');
});

test('a worker that is recycled (its sandbox cannot recover) sends its counters as it stops: what it counted since the last scrape stays counted', { timeout: 180_000 }, async () => {
  // An isolate thread parked for good (a builtin V8 cannot interrupt, on an isolate thread): the worker drains and is replaced.
  const hang = "export default function (ctx) { if (ctx.address.localPart === 'hang') return reject('r=' + Array(2 ** 32 - 1).lastIndexOf(1)); }\n";
  const r = await server();
  try {
    // The script added by a reload, in force in every process.
    const digest = (await r.cluster()).reload.processes['worker 0']?.digest;
    await writeFile(join(r.dir, 'scripts', 'rcptto.js'), hang);
    await r.waitFor('the script in force', async () => {
      const reload = (await r.cluster()).reload;
      return reload.converged && reload.processes['worker 0'] && reload.processes['worker 0'].digest !== digest;
    });
    const first = await workerPid(r, 0);
    // The earlier tests' counts, as the worker last answered; from here on it is not scraped before it goes: all it
    // counts reaches /metrics only as its last words.
    const before = await scrapeMetrics(r.port('admin'));
    const added = (name: string): number => (m.get(name) ?? 0) - (before.get(name) ?? 0);
    for (let i = 0; i < 2; i++) await submitMessage(r.port('in'), 'a@example.net', ['b@example.test']);
    const client = await greeted(r);
    assert.equal((await client.command('MAIL FROM:<a@example.test>', 30_000)).code, 250);
    assert.match((await client.command('RCPT TO:<hang@example.test>', 30_000)).text, /^451 4\.3\.0/);
    await client.quit().catch(() => undefined);
    await r.waitFor('the worker replaced', async () => {
      const p = (await r.cluster()).processes.find((x) => x.role === 'worker' && x.index === 0);
      return p?.ready && p.pid && p.pid !== first;
    });
    assert.ok(r.logs.some((l) => /^worker 0 is being replaced: its sandbox cannot recover/.test(String(l.msg))), 'recycled, not killed');
    const m = await scrapeMetrics(r.port('admin'));
    assert.equal(added('postern_messages_accepted_total{listener="in"}'), 2, 'its accepted messages');
    assert.equal(added('postern_smtp_refusals_total{listener="in",stage="RCPT",class="4xx",reason="script rcptto failed (fail closed)"}'), 1, 'its refusal');
    assert.equal(added('postern_script_failures_total{hook="rcptto",kind="timeout",source="smtp"}'), 1, 'its script failure');
  } finally {
    await r.stop();
    shared = undefined;
  }
});
