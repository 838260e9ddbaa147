/**
 * The supervisor at its open-file limit. It accepts the connections of the policy services, and of every listener
 * with workerChoice roundRobin, and holds each until a worker takes it (up to 10,000 waiting: more than a common
 * soft limit of 1,024). At EMFILE libuv accepts and closes every connection queued on the port (its "EMFILE trick"),
 * which Node never reports: clients were cut off by the hundred and nothing was logged, and the supervisor's own
 * files (cluster.json, its lock, the status socket) found no descriptor either. Now it counts its descriptors at
 * each heartbeat as a worker does, closes what it accepts while fewer than a reserve are left (counted as refused),
 * says so once, and once again when there is room.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { greeted, startCluster, workerPid, ONE_WORKER, ROUND_ROBIN } from '../helpers/cluster.ts';
import { closed } from '../helpers/wait.ts';

function hardFileLimit(pid: number): string {
  return /Max open files\s+\S+\s+(\d+|unlimited)/.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))![1]!;
}

test('a supervisor near its open-file limit says so once, closes what it accepts meanwhile, and serves again once descriptors are free', { timeout: 120_000 }, async () => {
  const c = await startCluster({ config: `${ROUND_ROBIN}${ONE_WORKER}` });
  try {
    await workerPid(c, 0);
    const sup = c.proc.pid!;
    const hard = hardFileLimit(sup);
    // A few descriptors left: fewer than the reserve it keeps for its own files.
    execFileSync('prlimit', ['--pid', String(sup), `--nofile=${readdirSync(`/proc/${sup}/fd`).length + 8}:${hard}`]);
    const near = (): Array<Record<string, unknown>> => c.logs.filter((l) => /supervisor is near its open-file limit/.test(String(l.msg)));
    await c.waitFor('the supervisor to say it is near its open-file limit', () => near().length > 0, 20_000);
    // Clients meanwhile are closed unanswered, by the supervisor (not silently by the system), and said once.
    for (let i = 0; i < 20; i++) {
      const s = net.connect(c.port('in'), '127.0.0.1');
      s.on('error', () => undefined);
      s.resume();
      await closed(s);
    }
    assert.equal(near().length, 1, 'said once, not per connection');
    execFileSync('prlimit', ['--pid', String(sup), `--nofile=${hard}:${hard}`]);
    await c.waitFor('descriptors to spare again', () => c.logs.some((l) => /supervisor has descriptors to spare again/.test(String(l.msg))), 20_000);
    const client = await greeted(c);
    await client.quit();
    assert.equal(near().length, 1);
  } finally {
    await c.stop();
  }
});
