// The supervisor's own check at accept (connections waiting for a worker, per address) follows a reload as
// the workers' limits do: it kept the limits the server started with, so a lowered maxConnectionsPerIp let
// a client queue as many connections as before while no worker could take them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, workerPid, ONE_WORKER, ROUND_ROBIN } from '../helpers/cluster.ts';

test('a maxConnectionsPerIp lowered by a reload bounds the connections waiting at the supervisor too', { timeout: 120_000 }, async () => {
  const c = await startCluster({ config: ONE_WORKER.replace('limits: { greetingDelayMs: 0 }', 'limits: { greetingDelayMs: 0, maxConnectionsPerIp: 50 }') + ROUND_ROBIN });
  const file = join(c.dir, 'postern.yaml');
  const sockets: Socket[] = [];
  let pid = 0;
  try {
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    const before = (await c.cluster()).reload.processes['worker 0']!.reloads;
    await writeFile(file, (await readFile(file, 'utf8')).replace('maxConnectionsPerIp: 50', 'maxConnectionsPerIp: 3'));
    await c.waitFor('every process reloaded, and the supervisor on the same content', async () => {
      const r = (await c.cluster()).reload;
      const all = Object.values(r.processes);
      return all.every((p) => p.reloads > before && !p.lastError) && all.every((p) => p.digest === r.supervisor);
    });
    pid = await workerPid(c, 0);
    process.kill(pid, 'SIGSTOP'); // no worker takes connections now: past the 3 handed to it, they wait at the supervisor
    // 3 handed to the stopped worker, 3 more may wait: the next ones are closed as they are accepted (with 50, none was).
    for (let i = 0; i < 12; i++) {
      const s = connect(c.port('in'), '127.0.0.1');
      s.on('error', () => undefined);
      sockets.push(s);
    }
    await c.waitFor('connections beyond the limit closed at accept', () => c.logs.some((l) => /too many connections from this address waiting for a worker/.test(String(l.msg))), 30_000);
  } finally {
    if (pid) try { process.kill(pid, 'SIGCONT'); } catch { /* replaced meanwhile */ }
    for (const s of sockets) s.destroy();
    await c.stop();
  }
});
