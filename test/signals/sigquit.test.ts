// SIGQUIT (Ctrl-\ at a terminal, which signals the whole foreground process group; `kill -QUIT` by an administrator
// used to nginx's graceful quit) had no handler in any process of `postern serve`: Node's default ended each at once.
// Every session was cut mid-transaction without a 421, and a worker signalled alone died as a crash does (replaced,
// and blamed on the scripts it was running). It now stops the process as SIGTERM does: transactions in progress
// finish, exit 0; a worker signalled alone drains and is replaced without being taken for a crash.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, greeted, spooled, workerPid, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';
import type { SmtpTestClient } from '../helpers/smtp-client.ts';

async function halfSent(cluster: ClusterProcess): Promise<SmtpTestClient> {
  const sending = await greeted(cluster);
  assert.equal((await sending.command('MAIL FROM:<a@example.org>')).code, 250);
  assert.equal((await sending.command('RCPT TO:<b@example.test>')).code, 250);
  assert.equal((await sending.command('DATA')).code, 354);
  sending.write('Subject: quit\r\n\r\nfirst half');
  return sending;
}

/** `logsFrom`: where this test's log lines begin (the server's earlier test had its worker drain too). */
async function finished(cluster: ClusterProcess, sending: SmtpTestClient, logsFrom: number): Promise<void> {
  // (Or the session cut: the process ended at once.)
  await cluster.waitFor('the worker to start draining', () => sending.closed || cluster.logs.slice(logsFrom).some((l) => l.msg === 'stopping: sessions in progress may finish their transaction'));
  assert.ok(!sending.closed, 'the session was not cut');
  sending.write('second half\r\n.');
  const queued = await sending.read();
  assert.equal(queued.code, 250, 'the transaction in progress finished');
  assert.ok((await spooled(cluster)).has(/queued as (\S+)/.exec(queued.text)![1]!), 'and is spooled');
  // The client leaves, as most do once their mail is queued: the stop ends with its session, rather than after the
  // listener's 5 s grace for a silent one (a wait of each test's that tests nothing here: test/cluster/stop.test.ts has it).
  await sending.quit();
}

/**
 * One server for both tests (a server each cost some 2 s of CPU to start and stop), detached for the signal to its
 * group: the worker signalled alone first, then the whole group, which ends it.
 */
let shared: ClusterProcess | undefined;
const server = async (): Promise<ClusterProcess> => (shared ??= await startCluster({ config: ONE_WORKER, detached: true }));
after(() => shared?.stop());

test('SIGQUIT to a worker alone: its transaction finishes, it is replaced as a stopped worker (not a crash), the server serves on', { timeout: 120_000 }, async () => {
  const cluster = await server();
  try {
    const pid = await workerPid(cluster, 0);
    const logsFrom = cluster.logs.length;
    const sending = await halfSent(cluster);
    process.kill(pid, 'SIGQUIT');
    await finished(cluster, sending, logsFrom);
    const replaced = await cluster.waitFor('the worker replaced', () => cluster.logs.slice(logsFrom).find((l) => /^worker (process died|0 stopped)/.test(String(l.msg))));
    assert.equal(replaced.signal, null, `it ended by itself (${String(replaced.msg)})`);
    assert.equal(replaced.msg, 'worker 0 stopped (signalled, exit code 0): replacing it', 'a stop, not a death');
    await cluster.waitFor('a new worker 0 ready', async () => (await cluster.cluster()).processes.some((p) => p.role === 'worker' && p.ready && p.pid !== pid));
    const next = await greeted(cluster);
    assert.equal((await next.sendMail('a@example.org', ['b@example.test'])).code, 250, 'the replacement serves');
    await next.quit();
    assert.ok(cluster.proc.exitCode === null, 'the supervisor runs on');
  } catch (err) {
    await cluster.stop(); // not left half-way for the next test
    shared = undefined;
    throw err;
  }
});

test('SIGQUIT to the whole process group (Ctrl-\\): the transaction in progress finishes, exit 0, no child replaced', { timeout: 120_000 }, async () => {
  const cluster = await server();
  try {
    await cluster.waitFor('the worker and the queue process ready', async () => (await cluster.cluster()).processes.filter((p) => p.ready).length === 2);
    const logsFrom = cluster.logs.length; // the worker replaced before is not this test's
    const sending = await halfSent(cluster);
    const exited = new Promise<[number | null, string | null]>((r) => cluster.proc.once('exit', (code, signal) => r([code, signal])));
    process.kill(-cluster.proc.pid!, 'SIGQUIT');
    await finished(cluster, sending, logsFrom);
    assert.deepEqual(await exited, [0, null]);
    assert.deepEqual(cluster.logs.slice(logsFrom).filter((l) => /replacing it|could not start/.test(String(l.msg))).map((l) => l.msg), [], 'no child is taken for a crash');
  } finally {
    await cluster.stop();
    shared = undefined;
  }
});
