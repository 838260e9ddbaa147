// SIGHUP and SIGUSR2 to the whole process group (a terminal's hangup, a log rotation's `kill -USR2 -- -PGID`) are
// ignored by the children, by handlers child.ts installed only once its whole module graph had loaded. A child still
// loading (every child at the server's start; a worker being replaced) met the signal's default action, which ends
// the process: at the start, `worker process 0 could not start (signal SIGHUP)`, exit 1. The children's entry now
// handles them before it loads anything else.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, greeted, ONE_WORKER } from '../helpers/cluster.ts';

const PRELOAD = new URL('./fixtures/slow-child-load.mjs', import.meta.url).href;

for (const signal of ['SIGHUP', 'SIGUSR2'] as const) {
  test(`${signal} to the process group while a worker is still loading: the start goes on and the server serves`, { timeout: 120_000 }, async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'postern-child-loads-'));
    const marker = join(tmp, 'loading');
    let signalled = false;
    // Once the worker and the queue process are held in their loading (each wrote its pid), the whole group gets the
    // signal (the supervisor leads it).
    const loading = [`${marker}-worker`, `${marker}-queue`];
    const signaller = (async () => {
      // A marker is written in place: it may exist a moment before its pid is in it.
      const pidIn = (m: string): number => existsSync(m) ? Number(readFileSync(m, 'utf8')) || 0 : 0;
      for (let i = 0; i < 1200 && !loading.every((m) => pidIn(m) > 0); i++) await new Promise((r) => setTimeout(r, 25));
      const pid = pidIn(loading[0]!);
      const supervisor = Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
      process.kill(-supervisor, signal);
      signalled = true;
    })();
    const cluster = await startCluster({ config: ONE_WORKER, detached: true, env: { NODE_OPTIONS: `--import=${PRELOAD}`, POSTERN_TEST_SLOW_LOAD_MARKER: marker, POSTERN_TEST_SLOW_LOAD_ROLES: 'worker,queue' } })
      .finally(() => signaller);
    try {
      assert.ok(signalled, 'the group was signalled while the worker loaded');
      const client = await greeted(cluster);
      assert.equal((await client.sendMail('a@example.org', ['b@example.test'])).code, 250);
      await client.quit();
      assert.deepEqual(cluster.logs.filter((l) => /died|could not start|replacing it/.test(String(l.msg))).map((l) => l.msg), [], 'no process ended');
    } finally {
      await cluster.stop();
      await rm(tmp, { recursive: true, force: true });
    }
  });
}
