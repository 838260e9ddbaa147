/**
 * While a spool sync hangs (the journal's fdatasync past its deadline and not returned), every new client still sent
 * its whole message before its 451, /readyz said 200 (a load balancer kept sending mail to a node that can keep none),
 * and nothing but the per-message failures said so. Now MAIL FROM gets 451 4.3.0 saying the spool cannot confirm
 * writes, as does a DATA of a transaction begun before (before its 354); one error line says so for the episode;
 * /readyz says the spool is not ready, postern_spool_writes_unconfirmed is 1 and `postern status` says it. Once the
 * disk answers, mail is taken again without a restart, and /readyz is 200 again. The fault is injected at the C
 * library (test/helpers/disk-faults.c, preloaded); clients, worker and supervisor are real.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { greeted, ONE_WORKER, ROUND_ROBIN, startCluster, TWO_WORKERS, workerOf, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';
import type { SmtpTestClient } from '../helpers/smtp-client.ts';
import { MIN_SYNC_DEADLINE_MS } from '../../engine/spool/sync-deadline.ts';

const ROOT = new URL('../../', import.meta.url).pathname;

/**
 * The spool's deadline shortened from its 30 s to the least the configuration takes (MIN_SYNC_DEADLINE_MS, 5 s; it was
 * 8 s): the file waits it out four times. Nothing here has to finish within it: each wait ends with the hung sync.
 */
const SYNC_DEADLINE = `syncDeadlineMs: ${MIN_SYNC_DEADLINE_MS}`;
const CONFIG = `${ONE_WORKER}admin: { listen: "127.0.0.1:{PORT:admin}" }\nspool: { ${SYNC_DEADLINE} }\n`;
/** The "for N s" of the refusal's log line: the deadline, or a second or two later (the stall is looked at each second). */
const AT_THE_DEADLINE = new RegExp(`has not confirmed the spool journal's last write .* for [${MIN_SYNC_DEADLINE_MS / 1000}-${MIN_SYNC_DEADLINE_MS / 1000 + 2}] s`);

/** A whole transaction; the reply to its final dot. */
async function send(client: SmtpTestClient, subject: string): Promise<{ code: number; text: string; stage: string }> {
  const mail = await client.command('MAIL FROM:<a@example.test>');
  if (mail.code !== 250) return { ...mail, stage: 'MAIL' };
  assert.equal((await client.command('RCPT TO:<b@example.test>')).code, 250);
  const data = await client.command('DATA');
  if (data.code !== 354) return { ...data, stage: 'DATA' };
  for (const line of [`Subject: ${subject}`, '', 'x', '.']) client.write(line);
  return { ...await client.read(150_000), stage: 'end' };
}

const readyz = async (port: number): Promise<{ status: number; body: { checks: Record<string, { ok: boolean; detail?: string }> } }> => {
  const r = await fetch(`http://127.0.0.1:${port}/readyz`);
  return { status: r.status, body: await r.json() as { checks: Record<string, { ok: boolean; detail?: string }> } };
};

/** One build of the library and one folder of armed faults for the whole file. */
const faults = diskFaults();

/** The server the reload test leaves (reloaded to CONFIG, its disk back), which the next test goes on with: a cluster's start and stop is much of a test's CPU. */
let handed: ClusterProcess | null = null;
after(async () => { await handed?.stop(); });

test('spool.syncDeadlineMs changed by a reload: the next sync that hangs is refused at the new deadline', { timeout: 300_000 }, async () => {
  // 5 minutes: a message refused within the 150 s send() waits was refused at the reloaded deadline. Reloaded, the
  // configuration is CONFIG: the server goes on to the next test.
  const c = await startCluster({ env: faults.env, config: CONFIG.replace(SYNC_DEADLINE, 'syncDeadlineMs: 300000') });
  let passed = false;
  try {
    const config = join(c.dir, 'postern.yaml');
    await writeFile(config, (await readFile(config, 'utf8')).replace('syncDeadlineMs: 300000', SYNC_DEADLINE));
    const worker = await workerPid(c, 0);
    await c.waitFor('the worker reloaded', () => c.logs.some((l) => l.msg === 'reloaded' && l.pid === worker));
    assert.ok(!c.logs.some((l) => /needs a restart/.test(String(l.msg))), 'no restart needed');
    const client = await greeted(c);
    faults.armFor('fdatasync-hang', '.seg');
    const hung = await send(client, 'hung');
    assert.deepEqual([hung.stage, hung.code], ['end', 451]);
    await c.waitFor('refused at the reloaded deadline',
      () => c.logs.some((l) => l.msg === 'spooling failed' && AT_THE_DEADLINE.test(JSON.stringify(l))));
    await client.quit();
    // For the next test: the hang seen (/readyz 503), then its end (200 again), so that the next message is taken.
    await c.waitFor('/readyz 503 while the sync hangs', async () => (await readyz(c.port('admin'))).status === 503);
    faults.disarm('fdatasync-hang');
    await c.waitFor('the disk back: /readyz 200', async () => (await readyz(c.port('admin'))).status === 200);
    passed = true;
    handed = c;
  } finally {
    faults.disarm('fdatasync-hang');
    if (!passed) await c.stop();
  }
});

test('a hung spool sync: new transactions refused at MAIL FROM and DATA (451 4.3.0, before the message is sent), one error line, /readyz 503 and the gauge at 1, status says it; the disk back, mail taken and ready again', { timeout: 300_000 }, async () => {
  // The reload test's server (its episode over), or one of its own.
  const c = handed ?? await startCluster({ env: faults.env, config: CONFIG });
  handed = null;
  const firstLog = c.logs.length;
  const logs = (): Array<Record<string, unknown>> => c.logs.slice(firstLog);
  const admin = c.port('admin');
  try {
    const first = await greeted(c);
    assert.equal((await send(first, 'warm')).code, 250);
    assert.equal((await readyz(admin)).status, 200);
    // A transaction begun before the hang: its DATA comes during it.
    const begun = await greeted(c);
    assert.equal((await begun.command('MAIL FROM:<a@example.test>')).code, 250);
    assert.equal((await begun.command('RCPT TO:<b@example.test>')).code, 250);

    const pipelining = await greeted(c);
    assert.equal((await pipelining.command('MAIL FROM:<a@example.test>')).code, 250);
    assert.equal((await pipelining.command('RCPT TO:<b@example.test>')).code, 250);

    faults.armFor('fdatasync-hang', '.seg');
    const hung = await send(first, 'hung');
    assert.deepEqual([hung.stage, hung.code], ['end', 451], 'the message waiting for the sync: its 451 at the dot, as before');
    await c.waitFor('refused at the configured deadline (spool.syncDeadlineMs; the stall is looked at each second), not the default 30 s',
      () => logs().some((l) => l.msg === 'spooling failed' && AT_THE_DEADLINE.test(JSON.stringify(l))));

    const next = await greeted(c);
    const refused = await send(next, 'refused-early');
    assert.equal(refused.stage, 'MAIL', `refused before the message is sent (got ${refused.code} at ${refused.stage})`);
    assert.match(refused.text, /^451 4\.3\.0 .*cannot confirm/);
    const atData = await begun.command('DATA');
    assert.match(atData.text, /^451 4\.3\.0 .*cannot confirm/, 'DATA of a transaction begun before: refused before its 354');
    assert.equal((await send(next, 'refused-again')).stage, 'MAIL');
    // DATA with the message sent behind it at once (no wait for the 354): refused and closed, or each of its lines would
    // run as a command (here a transaction of its own).
    pipelining.write('DATA\r\nSubject: smuggled\r\n\r\nRSET\r\nMAIL FROM:<x@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n.');
    const replies = await pipelining.repliesUntilClosed();
    assert.match(replies[0]?.text ?? '', /^451 4\.3\.0 .*cannot confirm/);
    assert.deepEqual(replies.slice(1).map((r) => r.text), [], 'nothing after: closed');

    const episode = (l: Record<string, unknown>): boolean => /spool cannot confirm writes/.test(String(l.msg)) && l.level === 50;
    await c.waitFor('one error line for the episode', () => logs().some(episode));
    await c.waitFor('/readyz: the spool not ready', async () => (await readyz(admin)).status === 503);
    assert.match((await readyz(admin)).body.checks.spool!.detail ?? '', /cannot confirm/);
    await c.waitFor('the gauge says it', async () => (await scrapeMetrics(admin)).get('postern_spool_writes_unconfirmed') === 1);
    const status = spawnSync(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', join(c.dir, 'postern.yaml')], { encoding: 'utf8', timeout: 60_000 });
    assert.match(status.stdout, /NOT READY: spool: .*cannot confirm/, status.stdout + status.stderr);

    faults.disarm('fdatasync-hang');
    // Until the worker has seen the hung sync return, MAIL FROM is still refused: how many tries is not the test's
    // business (each on a connection of its own: every refusal counts towards limits.maxErrors).
    for (;;) {
      const client = await greeted(c);
      const r = await send(client, 'after');
      await client.quit();
      if (r.code === 250) break;
      assert.equal(r.code, 451, r.text);
    }
    await c.waitFor('/readyz 200 again', async () => (await readyz(admin)).status === 200);
    await c.waitFor('the gauge back at 0', async () => (await scrapeMetrics(admin)).get('postern_spool_writes_unconfirmed') === 0);
    await c.waitFor('the end of the episode said', () => logs().some((l) => /spool confirms writes again/.test(String(l.msg))));
    assert.equal(logs().filter(episode).length, 1, 'one error line for the episode, not one per client');
    for (const cl of [first, begun, next]) await cl.quit();
  } finally {
    faults.disarm('fdatasync-hang');
    await c.stop();
  }
});

/** A greeted client on worker `index` (round robin may give two in a row to one worker: asked, not assumed). */
async function onWorker(c: ClusterProcess, index: number): Promise<SmtpTestClient> {
  for (;;) {
    const client = await greeted(c);
    if (await workerOf(c, client) === index) return client;
    await client.quit();
  }
}

test('a hung shared filesystem under two workers: each worker refuses once its own sync hangs; /readyz names every such worker, 200 again once both returned', { timeout: 300_000 }, async () => {
  const c = await startCluster({ env: faults.env, config: `${TWO_WORKERS}${ROUND_ROBIN}admin: { listen: "127.0.0.1:{PORT:admin}" }\nspool: { ${SYNC_DEADLINE} }\n` });
  const admin = c.port('admin');
  try {
    const [w0, w1] = [await onWorker(c, 0), await onWorker(c, 1)];
    for (const cl of [w0, w1]) assert.equal((await send(cl, 'warm')).code, 250);
    faults.armFor('fdatasync-hang', '.seg'); // every segment of the filesystem: both workers' journals
    assert.deepEqual((await send(w0, 'hung0')).code, 451);
    await c.waitFor('/readyz: worker-0 cannot confirm writes', async () => /worker-0/.test((await readyz(admin)).body.checks.spool?.detail ?? ''));
    // Worker 1 has not seen the disk hang yet: its first message waits the deadline, as worker 0's did; then it refuses early too.
    const first1 = await send(w1, 'hung1');
    assert.deepEqual([first1.stage, first1.code], ['end', 451]);
    assert.equal((await send(w1, 'refused1')).stage, 'MAIL');
    await c.waitFor('/readyz names both workers', async () => /worker-0.*worker-1|worker-1.*worker-0/.test((await readyz(admin)).body.checks.spool?.detail ?? ''));
    faults.disarm('fdatasync-hang');
    await c.waitFor('/readyz 200 once both syncs returned', async () => (await readyz(admin)).status === 200);
    for (const cl of [w0, w1]) await cl.quit();
    const after = [await onWorker(c, 0), await onWorker(c, 1)];
    for (const cl of after) assert.equal((await send(cl, 'after')).code, 250, 'each worker takes mail again');
    for (const cl of after) await cl.quit();
  } finally {
    faults.disarm('fdatasync-hang');
    await c.stop();
  }
});
