// SIGHUP (`systemctl reload`, right after a start that returned at the fork: Type=simple, as operations.md advises on
// systemd before 246) or SIGUSR2 (log rotation) to the installed command while it still loads its modules, before
// engine/cli/serve.ts handles them: their default action ended the server before it started. bin/postern.js now
// handles them for `serve` from its first instruction (nothing is loaded yet: a reload has nothing to do).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, greeted, ONE_WORKER } from '../helpers/cluster.ts';

const PRELOAD = new URL('./fixtures/slow-child-load.mjs', import.meta.url).href;

for (const signal of ['SIGHUP', 'SIGUSR2'] as const) {
  test(`${signal} to \`postern serve\` while it loads its modules: it starts and serves`, { timeout: 120_000 }, async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'postern-supervisor-loads-'));
    const marker = join(tmp, 'loading');
    let signalled = false;
    // Once the command is held in the loading of engine/cli/main.ts (it wrote its pid), it gets the signal.
    const signaller = (async () => {
      for (let i = 0; i < 1200 && !existsSync(`${marker}-supervisor`); i++) await new Promise((r) => setTimeout(r, 25));
      process.kill(Number(readFileSync(`${marker}-supervisor`, 'utf8')), signal);
      signalled = true;
    })();
    const cluster = await startCluster({
      config: ONE_WORKER, installed: true,
      env: { NODE_OPTIONS: `--import=${PRELOAD}`, POSTERN_TEST_SLOW_LOAD_MARKER: marker, POSTERN_TEST_SLOW_LOAD_ROLES: 'supervisor' },
    }).finally(() => signaller);
    try {
      assert.ok(signalled, 'the command was signalled while it loaded');
      const client = await greeted(cluster);
      assert.equal((await client.sendMail('a@example.org', ['b@example.test'])).code, 250);
      await client.quit();
    } finally {
      await cluster.stop();
      await rm(tmp, { recursive: true, force: true });
    }
  });
}
