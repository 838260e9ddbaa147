// `postern queue hold | release` with `postern serve` (supervisor, worker, queue process): the message sits
// in the worker's spool, the queue process honours the hold whether the command ran while the server was
// up or down, across a restart, and /metrics and `postern status` count it; the operations made while it
// was down are logged at its next start.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { startSink } from '../helpers/sink.ts';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { queueActionCommand, queueListCommand } from '../../engine/cli/queue.ts';
import { statusCommand } from '../../engine/cli/status.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';

test('held across a restart, held or released while the server is down, counted by status and metrics', async () => {
  let deferring = true;
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && deferring && address.startsWith('slow') ? { code: 451, text: '4.2.0 Not now' } : null) });
  const dataRoot = await mkdtemp(join(tmpdir(), 'postern-hold-serve-'));
  const dataDir = join(dataRoot, 'data');
  const config = `
workers: 1
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", reverseDns: false, limits: { greetingDelayMs: 0 } }
admin: { listen: "127.0.0.1:{PORT:admin}" }
delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${sink.port} } }
  tls: { mode: none }
  retrySchedule: [3600]
  scanIntervalMs: 200
`;
  const scripts = { 'rcptto.ts': 'export default () => accept();' };
  let c: ClusterProcess | null = null;
  const cli = async (...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> => runCli(['queue', ...args, '-c', join(c!.dir, 'postern.yaml')]);
  // Each command's first run is the command line; its further ones call its function in this process (a process
  // each, ~0.3 s of CPU mostly module loading, proved nothing more).
  const listHere = () => runInProcess(() => queueListCommand({ config: join(c!.dir, 'postern.yaml') }));
  const holdOrReleaseHere = (op: 'hold' | 'release', id: string) => runInProcess(() => queueActionCommand(op, [id], { config: join(c!.dir, 'postern.yaml') }));
  const status = async (inProcess = false): Promise<{ queue: { messages: number; held: number; oldestAgeSeconds: number } }> => {
    const r = inProcess ? await runInProcess(() => statusCommand({ config: join(c!.dir, 'postern.yaml') })) : await runCli(['status', '-c', join(c!.dir, 'postern.yaml')]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as { queue: { messages: number; held: number; oldestAgeSeconds: number } };
  };
  const logged = (what: (l: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> => c!.waitFor('a log line', () => c!.logs.find(what));
  try {
    c = await startCluster({ config, scripts, dataDir });
    const held = await submitMessage(c.port('in'), 'me@origin.test', ['slow1@dest.test']);
    const other = await submitMessage(c.port('in'), 'me@origin.test', ['slow2@dest.test']);
    for (const id of [held, other]) await logged((l) => l.id === id && l.status === 'deferred');

    const hold = await cli('hold', held);
    assert.equal(hold.code, 0, hold.stderr);
    assert.equal(hold.stdout, `1 message placed on hold: ${held}\n`);
    await logged((l) => l.id === held && l.op === 'hold'); // the queue process logged it
    const metrics = await scrapeMetrics(c.port('admin'));
    assert.equal(metrics.get('postern_queue_messages'), 2);
    assert.equal(metrics.get('postern_queue_held_messages'), 1);
    assert.equal((await status()).queue.held, 1);

    // Stopped: release makes it due now, hold again keeps it from that due attempt; retry makes the other due.
    const exited = new Promise((resolve) => c!.proc.once('exit', resolve));
    c.proc.kill('SIGTERM');
    await exited;
    assert.equal((await cli('release', held)).code, 0);
    assert.equal((await holdOrReleaseHere('hold', held)).stdout, `1 message placed on hold: ${held}\n`);
    const retry = await cli('retry', '--all');
    assert.equal(retry.stdout, `1 message due now: ${other}\n`);
    assert.match((await cli('list')).stdout, new RegExp(`^${held}! `, 'm'));
    await rm(c.dir, { recursive: true, force: true }); // the first run's folder; the data folder is the test's

    deferring = false;
    c = await startCluster({ config, scripts, dataDir });
    await logged((l) => l.id === other && l.msg === 'message finished, removed from the spool'); // (its `sent` line comes before the removal)
    // Logged at this start, in the order they were made, with who made them.
    const ops = await c.waitFor('the operations made while stopped', () => {
      const lines = c!.logs.filter((l) => typeof l.op === 'string');
      return lines.length >= 3 ? lines : null;
    });
    assert.deepEqual(ops.map((l) => [l.op, l.id]), [['release', held], ['hold', held], ['retry', other]]);
    const after = await scrapeMetrics(c.port('admin'));
    assert.equal(after.get('postern_queue_messages'), 1);
    assert.equal(after.get('postern_queue_held_messages'), 1);
    assert.equal(after.get('postern_queue_oldest_message_age_seconds'), 0, 'a held message is not a stuck queue');
    assert.deepEqual((await status(true)).queue, { messages: 1, held: 1, oldestAgeSeconds: 0 });
    assert.ok(!sink.messages.some((m) => m.to.includes('slow1@dest.test')), 'held through the restart although due');
    assert.ok(!c.logs.some((l) => l.id === held && typeof l.status === 'string'), 'not attempted since the restart');

    const release = await holdOrReleaseHere('release', held);
    assert.equal(release.code, 0, release.stderr);
    const sent = await logged((l) => l.id === held && l.status === 'sent');
    assert.equal(sent.attempt, 2);
    assert.ok(sink.messages.some((m) => m.to.includes('slow1@dest.test')));
    await c.waitFor('an empty queue', async () => (await listHere()).stdout === 'Mail queue is empty\n');
    assert.equal((await scrapeMetrics(c.port('admin'))).get('postern_queue_held_messages'), 0);
  } finally {
    await c?.stop();
    await sink.close();
    await rm(dataRoot, { recursive: true, force: true });
  }
});
