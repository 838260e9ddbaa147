// A worker signalled alone (`kill -TERM <pid>` to recycle one, or SIGQUIT/SIGINT) drains its sessions for up to 5 s
// and is replaced. The supervisor did not know it was stopping: with workerChoice roundRobin it went on handing it new
// connections for that whole time, and each of them got its greeting and then `421 4.4.2 Server shutting down` at
// the first command, from a server that was not stopping at all (half of the new clients, with two workers). The
// worker now tells the supervisor as its stop begins; new connections go to the other workers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, greeted, workerPid, ROUND_ROBIN, TWO_WORKERS } from '../helpers/cluster.ts';

for (const signal of ['SIGTERM', 'SIGQUIT'] as const) {
  test(`${signal} to one worker of two (roundRobin): while it drains, new clients are served by the other, none gets 421`, { timeout: 120_000 }, async () => {
    const cluster = await startCluster({ config: `${ROUND_ROBIN}${TWO_WORKERS}` });
    const open: Array<Awaited<ReturnType<typeof greeted>>> = [];
    try {
      await cluster.waitFor('both workers and the queue process ready', async () => (await cluster.cluster()).processes.filter((p) => p.ready).length === 3);
      const pid = await workerPid(cluster, 0);
      // Transactions under way on both workers (round robin): worker 0's keeps it draining for its grace time.
      open.push(await greeted(cluster), await greeted(cluster));
      for (const c of open) assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
      process.kill(pid, signal);
      await cluster.waitFor('worker 0 draining', () => cluster.logs.some((l) => l.pid === pid && l.msg === 'stopping: sessions in progress may finish their transaction'));
      // The worker tells the supervisor before it tells its sessions (and logs the line waited for above).
      const replies: string[] = [];
      for (let i = 0; i < 6; i++) {
        const c = await greeted(cluster);
        replies.push((await c.command('MAIL FROM:<a@example.org>')).text);
        await c.quit();
      }
      assert.deepEqual(replies, Array(6).fill('250 2.1.0 Accepted'), 'every new client served');
      assert.ok(!cluster.logs.some((l) => /^worker (process died|0 stopped)/.test(String(l.msg))), 'worker 0 was still draining (its transaction open)');
      assert.ok(cluster.logs.some((l) => /^worker 0 is stopping \(signalled\)/.test(String(l.msg))), 'the supervisor says why worker 0 takes no connections');
      assert.ok(cluster.proc.exitCode === null, 'the server runs on');
    } finally {
      // Left open, their transactions held the server's stop for the workers' whole 5 s drain.
      for (const c of open) c.destroy();
      await cluster.stop();
    }
  });
}
