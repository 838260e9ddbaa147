/**
 * A stop signal while `postern serve` starts (a service manager's stop, or restart, of a server still starting).
 * The start is made to last: worker 0's spool is locked by this test, as by a process of an earlier server still
 * finishing there, so the new worker waits for it (up to 100 s). The supervisor used to go on waiting for its
 * children through a SIGTERM of its own, and to end with exit 1 and "worker process 0 could not start" when the
 * signal reached the children too (their process group signalled): a stop that was asked for, reported as a failure.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { acquireDirectoryLock, LOCK_FILE } from '../../engine/spool/data-dir-lock.ts';
import { workerSpoolDir } from '../../engine/cluster/spool-set.ts';
import { freePort, ONE_WORKER } from '../helpers/cluster.ts';
import { until } from '../helpers/wait.ts';

const ROOT = new URL('../../', import.meta.url).pathname;

for (const target of ['the supervisor', 'the process group'] as const) {
  test(`SIGTERM to ${target} while a worker waits to start: the start ends at once, exit 0, every process gone, the lock given back`, { timeout: 150_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-stop-starting-'));
    const dataDir = join(dir, 'data');
    await mkdir(join(dir, 'scripts'));
    await writeFile(join(dir, 'postern.yaml'), `dataDir: ${JSON.stringify(dataDir)}\nscripts: ${JSON.stringify(join(dir, 'scripts'))}\n${ONE_WORKER.replace('{PORT:in}', String(await freePort()))}`);
    const earlier = acquireDirectoryLock(workerSpoolDir(dataDir, 0));
    const proc = spawn(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'serve', '--config', join(dir, 'postern.yaml')], {
      cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1' }, detached: true,
    });
    let out = '';
    let stderr = '';
    proc.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
    proc.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    let children: number[] = [];
    try {
      await until('the new worker waiting for the earlier one', () => new RegExp(`waiting for process ${process.pid}, of an earlier server`).test(out), { timeoutMs: 60_000 })
        .catch((err: Error) => { throw new Error(`${err.message}; it wrote:\n${out}${stderr}`); });
      children = readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').trim().split(/\s+/).map(Number);
      assert.equal(children.length, 2, 'a worker and the queue process');
      process.kill(target === 'the supervisor' ? proc.pid! : -proc.pid!, 'SIGTERM');
      assert.equal(await exited, 0, `exit 0; stderr: ${stderr}`);
      assert.match(stderr, /postern: SIGTERM while starting: stopped/);
      assert.doesNotMatch(stderr, /could not start/);
      for (const pid of children) {
        await until(`child ${pid} gone`, () => { try { process.kill(pid, 0); return false; } catch { return true; } }, { timeoutMs: 30_000 });
      }
      assert.equal(existsSync(join(dataDir, LOCK_FILE)), false, 'the data directory\'s lock given back');
    } finally {
      if (proc.exitCode === null) proc.kill('SIGKILL');
      for (const pid of children) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      earlier.release();
      await rm(dir, { recursive: true, force: true });
    }
  });
}
