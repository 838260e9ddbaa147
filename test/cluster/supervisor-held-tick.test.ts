/**
 * A supervisor whose event loop is held a moment (a loaded machine descheduled it ~0.4 s) keeps its workers accepting
 * as they were. Its tick judged the workers' heartbeats before reading them: an event loop that gets the CPU back runs
 * its timers before it reads its sockets (here the children's channels), so every heartbeat looked older than
 * STALE_FOR_CONNECTIONS_MS (300 ms) though the workers had beaten all along, and the tick told the accepting worker
 * to stop, then, once the beats were read, to accept again: new connections waited meanwhile, the counting lease
 * ended, and the worker's accept turns (cluster.json acceptTurns) counted a change that never was.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startCluster, workerPid, ONE_WORKER } from '../helpers/cluster.ts';

/** Bytes process `pid` has written so far (its heartbeats to the supervisor among them). */
const written = (pid: number): number => Number(/wchar: (\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))![1]);

/** The supervisor's live status (its status socket): answered once its event loop runs. */
function liveStatus(dataDir: string): Promise<{ processes: Array<{ role: string; accepting?: boolean; acceptTurns?: number }> }> {
  return new Promise((resolve, reject) => {
    http.get({ socketPath: join(dataDir, 'postern.sock'), path: '/status' }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; }).on('end', () => resolve((JSON.parse(body) as { cluster: never }).cluster)).on('error', reject);
    }).on('error', reject);
  });
}

test('the supervisor held 0.6 s while its worker beats: the worker keeps accepting, told nothing', { timeout: 120_000 }, async () => {
  const c = await startCluster({ config: ONE_WORKER });
  const supervisor = c.proc.pid!;
  try {
    const worker = await workerPid(c, 0);
    const turns = await c.waitFor('worker 0 accepting', async () => {
      const w = (await liveStatus(c.dataDir)).processes.find((p) => p.role === 'worker');
      return w?.accepting ? w.acceptTurns! : null;
    });
    const before = written(worker);
    process.kill(supervisor, 'SIGSTOP');
    const stoppedAt = performance.now();
    try {
      // Held past the staleness limit with margin, then until the worker writes again (it beats every 100 ms): resumed
      // just after a beat, so that its newest beat is fresh when the supervisor reads it. (Resumed at 600 ms after any
      // write instead, a loaded machine that descheduled the worker made its newest beat older than the limit: a real
      // staleness, and the test failed on it.)
      while (performance.now() - stoppedAt < 600) await new Promise((r) => setTimeout(r, 20));
      const at600 = written(worker);
      while (written(worker) === at600) await new Promise((r) => setTimeout(r, 5));
      assert.ok(at600 > before, 'the worker beat while the supervisor was held');
    } finally {
      process.kill(supervisor, 'SIGCONT');
    }
    // Its ticks run again, one at once (overdue): the third answer, each asked after the last came, is made after that
    // tick (the first may be made in the turn before it). Looked at then, not after 500 ms of ticks: a worker a loaded
    // machine descheduled past the staleness limit meanwhile really was stale, and was told to stop, rightly.
    let status = await liveStatus(c.dataDir);
    for (let i = 1; i < 3; i++) status = await liveStatus(c.dataDir);
    const w = status.processes.find((p) => p.role === 'worker')!;
    assert.equal(w.accepting, true);
    assert.equal(w.acceptTurns, turns, 'told to stop accepting and to accept again: its heartbeats were judged unread');
  } finally {
    await c.stop();
  }
});
