// A worker signalled alone (`kill -TERM <pid>` to recycle one, or SIGQUIT/SIGINT) drains its sessions for up to 5 s
// and is replaced. The supervisor did not know it was stopping: with workerChoice roundRobin it went on handing it new
// connections for that whole time, and each of them got its greeting and then `421 4.4.2 Server shutting down` at
// the first command, from a server that was not stopping at all (half of the new clients, with two workers). The
// worker now tells the supervisor as its stop begins; new connections go to the other workers.
//
// A child stopped on purpose (`kill -TERM <pid>` of one worker to recycle it, of the queue process) says so as its stop
// begins, ends cleanly (exit code 0) and is replaced. Its exit was logged at error as a death: "worker process died
// (exit code 0): replacing it" (for the queue process with "a delivery it had under way may be made again"), which
// pages the on-call for what an administrator just did, and says a delivery may be repeated where none can be (its
// attempts settle before a clean exit). Now it is "worker 0 stopped (signalled, exit code 0): replacing it", at warn.
// (That test was stopped-alone-not-died.test.ts, on a one-worker server of its own.)
//
// One server for the three (a server each cost some 2 s of CPU to start and stop): each begins once every process of
// it is ready again, the one signalled before replaced, and reads the log and the restarts from there on.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, greeted, workerPid, ROUND_ROBIN, TWO_WORKERS, type ClusterProcess } from '../helpers/cluster.ts';

let shared: ClusterProcess | undefined;
const server = async (): Promise<ClusterProcess> => (shared ??= await startCluster({ config: `${ROUND_ROBIN}${TWO_WORKERS}` }));
after(() => shared?.stop());

/** Every process ready, none of them one signalled before (`gone`): the server, its processes' restarts and the log's length. */
async function settled(gone: Set<number>): Promise<{ cluster: ClusterProcess; restarts: Map<string, number>; logsFrom: number }> {
  const cluster = await server();
  const processes = await cluster.waitFor('both workers and the queue process ready', async () => {
    const ps = (await cluster.cluster()).processes;
    return ps.length === 3 && ps.every((p) => p.ready && p.pid && !gone.has(p.pid)) && ps;
  });
  return { cluster, restarts: new Map(processes.map((p) => [`${p.role} ${p.index}`, p.restarts])), logsFrom: cluster.logs.length };
}

const signalled = new Set<number>();

for (const signal of ['SIGTERM', 'SIGQUIT'] as const) {
  test(`${signal} to one worker of two (roundRobin): while it drains, new clients are served by the other, none gets 421`, { timeout: 120_000 }, async () => {
    const { cluster, logsFrom } = await settled(signalled);
    const logs = (): Array<Record<string, unknown>> => cluster.logs.slice(logsFrom);
    const open: Array<Awaited<ReturnType<typeof greeted>>> = [];
    try {
      const pid = await workerPid(cluster, 0);
      // Transactions under way on both workers (round robin): worker 0's keeps it draining for its grace time.
      open.push(await greeted(cluster), await greeted(cluster));
      for (const c of open) assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
      signalled.add(pid);
      process.kill(pid, signal);
      await cluster.waitFor('worker 0 draining', () => logs().some((l) => l.pid === pid && l.msg === 'stopping: sessions in progress may finish their transaction'));
      // The worker tells the supervisor before it tells its sessions (and logs the line waited for above).
      const replies: string[] = [];
      for (let i = 0; i < 6; i++) {
        const c = await greeted(cluster);
        replies.push((await c.command('MAIL FROM:<a@example.org>')).text);
        await c.quit();
      }
      assert.deepEqual(replies, Array(6).fill('250 2.1.0 Accepted'), 'every new client served');
      assert.ok(!logs().some((l) => /^worker (process died|0 stopped)/.test(String(l.msg))), 'worker 0 was still draining (its transaction open)');
      assert.ok(logs().some((l) => /^worker 0 is stopping \(signalled\)/.test(String(l.msg))), 'the supervisor says why worker 0 takes no connections');
      assert.ok(cluster.proc.exitCode === null, 'the server runs on');
    } finally {
      // Left open, their transactions held worker 0's stop (and the server's) for its whole 5 s drain.
      for (const c of open) c.destroy();
    }
  });
}

test('a worker and the queue process each stopped alone (SIGTERM): replaced, logged as stopped, not as died', { timeout: 120_000 }, async () => {
  const { cluster: c, restarts, logsFrom } = await settled(signalled);
  try {
    for (const role of ['worker', 'queue'] as const) {
      const pid = (await c.cluster()).processes.find((p) => p.role === role && p.index === 0)!.pid!;
      process.kill(pid, 'SIGTERM');
      await c.waitFor(`the ${role} process replaced`, async () => (await c.cluster()).processes.find((p) => p.role === role && p.index === 0 && p.restarts === restarts.get(`${role} 0`)! + 1 && p.ready && p.pid !== pid));
      const exits = c.logs.filter((l) => l.childPid === pid && /replacing it/.test(String(l.msg)));
      assert.deepEqual(exits.map((l) => [l.level, l.msg]), [[40, `${role} 0 stopped (signalled, exit code 0): replacing it`]], `the ${role}'s exit`);
    }
    assert.deepEqual(c.logs.slice(logsFrom).filter((l) => /died/.test(String(l.msg))).map((l) => l.msg), [], 'no death logged');
  } finally {
    await c.stop();
    shared = undefined;
  }
});
