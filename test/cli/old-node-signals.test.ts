// The installed command started by a Node older than 24 (a unit file's `ExecStart=/usr/bin/node …` on
// Debian): bin/postern.js stays the service's main process and runs the server as its child on the pinned
// Node 24. Every signal docs/operations.md describes must reach the server through it. SIGUSR1/SIGUSR2 —
// what log rotation setups send to the pid the service manager knows, i.e. this wrapper — are logged and
// ignored by the server, not the end of the wrapper (which left the server running orphaned, and under
// systemd a main process dead by a signal restarts the whole service, cutting every session).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ONE_WORKER, startCluster } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { OLD_NODE } from '../helpers/old-node.ts';
import { until } from '../helpers/wait.ts';

const POSTERN = new URL('../../bin/postern.js', import.meta.url).pathname;

test('under an older Node, SIGUSR1/SIGUSR2 to the command are logged and ignored by the server; SIGTERM still stops it with exit 0',
  { timeout: 180_000, skip: !OLD_NODE && 'no Node older than 24 on this machine' }, async () => {
    const c = await startCluster({ config: ONE_WORKER, installed: true, node: OLD_NODE });
    const supervisorPid = (JSON.parse(await readFile(join(c.dataDir, 'cluster.json'), 'utf8')) as { pid: number }).pid;
    assert.notEqual(supervisorPid, c.proc.pid, 'the server runs as a child of the command, on the pinned Node');
    try {
      for (const signal of ['SIGUSR1', 'SIGUSR2'] as const) {
        c.proc.kill(signal);
        await c.waitFor(`${signal} logged by the server`, () => c.logs.some((l) => l.signal === signal && String(l.msg).startsWith(`${signal} ignored`)));
      }
      await submitMessage(c.port('in'), 'a@example.org', ['b@example.test']);
      assert.equal(c.proc.exitCode, null, 'the command still runs');
      const exited = new Promise<number | null>((resolve) => c.proc.once('exit', (code) => resolve(code)));
      c.proc.kill('SIGTERM');
      assert.equal(await exited, 0);
    } finally {
      // Should the command have died, its server is left behind: end it by its own pid.
      try { process.kill(supervisorPid, 'SIGTERM'); } catch { /* already gone */ }
      await c.stop();
    }
  });

test('under an older Node, a command that a signal ends ends the same way (a shell sees the signal, not exit 1)',
  { timeout: 120_000, skip: !OLD_NODE && 'no Node older than 24 on this machine' }, async () => {
    // hash-password waits for stdin and, unlike serve, has no handler of SIGUSR2: its default ends it.
    const command = spawn(OLD_NODE!, [POSTERN, 'hash-password'], { stdio: ['pipe', 'ignore', 'ignore'] });
    const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => command.once('exit', (code, signal) => resolve({ code, signal })));
    try {
      // The command forwards signals once it has started the pinned Node: wait for that child.
      await until('the command to start its Node 24 child', () => spawnSync('pgrep', ['-P', String(command.pid)]).status === 0);
      command.kill('SIGUSR2');
      assert.deepEqual(await ended, { code: null, signal: 'SIGUSR2' });
    } finally {
      command.kill('SIGKILL');
    }
  });
