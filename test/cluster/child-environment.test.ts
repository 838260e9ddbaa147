// `postern serve` with `store.redis.url` holding a password (a real redis-server with requirepass): the worker
// and the queue process reach Redis with it, yet it is in no child's /proc/<pid>/environ or cmdline (it was, in
// the settings the supervisor handed over in the environment), nor in a worker started again after a crash,
// nor in the log.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { needsRedis, startRedis } from '../helpers/redis-server.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';

const PASSWORD = 'Redis-Secret-4711';
const cleanup: Array<() => Promise<void>> = [];
after(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => undefined);
});

/** The greeting of a new connection: 220 only once the worker counted it in Redis (connectionRatePerIp). */
async function greeting(c: ClusterProcess): Promise<string> {
  const client = await SmtpTestClient.connect(c.port('in'));
  try {
    return (await client.read(30_000)).text;
  } finally {
    client.destroy();
  }
}

/** Every child's environment and command line, as any process of the same user (or root) reads them. */
async function childProcesses(c: ClusterProcess): Promise<Array<{ pid: number; text: string }>> {
  const pids = (await c.cluster()).processes.map((p) => p.pid).filter((p): p is number => p !== null);
  assert.equal(pids.length, 2, 'a worker and the queue process');
  return Promise.all(pids.map(async (pid) => ({
    pid, text: `${await readFile(`/proc/${pid}/environ`, 'latin1')}\n${await readFile(`/proc/${pid}/cmdline`, 'latin1')}`,
  })));
}

test('the Redis password reaches the children, not their environment: also after a worker is started again', { skip: needsRedis().skip, timeout: 120_000 }, async () => {
  const redis = await startRedis({ password: PASSWORD });
  cleanup.push(() => redis.stop());
  assert.ok(redis.url.includes(PASSWORD));
  const c = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
store: { redis: { url: "${redis.url}" } }
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, connectionRatePerIp: { count: 1000, windowSeconds: 60 } }
`,
  });
  cleanup.push(() => c.stop());
  const first = await workerPid(c, 0);
  await until('a greeting counted in Redis', async () => (await greeting(c)).startsWith('220 '), { timeoutMs: 30_000, intervalMs: 200 });
  for (const p of await childProcesses(c)) {
    assert.match(p.text, /POSTERN_ROLE=/, 'the environment was read');
    assert.ok(!p.text.includes(PASSWORD) && !p.text.includes('redis://'), `the Redis URL in process ${p.pid}'s environment`);
  }

  process.kill(first, 'SIGKILL');
  const second = await c.waitFor('worker 0 started again', async () => {
    const pid = await workerPid(c, 0);
    return pid !== first ? pid : null;
  }, 60_000);
  await until('the new worker counts in Redis', async () => (await greeting(c)).startsWith('220 '), { timeoutMs: 30_000, intervalMs: 200 });
  const again = (await childProcesses(c)).find((p) => p.pid === second)!;
  assert.ok(!again.text.includes(PASSWORD), 'the Redis URL in the new worker\'s environment');
  assert.ok(!c.lines.join('\n').includes(PASSWORD), 'the password in the log');
});
