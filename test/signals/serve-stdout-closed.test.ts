// `npm start | head -1`, `postern serve | true`, a terminal closed under it: the reader of the server's stdout (its log)
// is gone. The log writer drops its lines then, but the quick start of the embedded default went through
// process.stdout, whose EPIPE was an 'error' event no one listened to: the supervisor died with a stack trace, exit 1,
// and its children stopped with it. A closed stdout (or stderr) must never end the server.
//
// The embedded default listens on its fixed ports (2525, 2587, 2465): it runs in a network namespace of its own
// (unshare -n, with its loopback up), so no other server on this machine is in its way.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useScratchDir } from '../helpers/scratch.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const NODE = join(ROOT, 'node_modules/.bin/node');
const scratch = useScratchDir('postern-stdout-closed-');
const ownNetwork = spawnSync('unshare', ['-n', 'true']).status === 0;

interface ClusterJson { processes: Array<{ ready: boolean }> }

for (const closed of ['stdout', 'stdout and stderr'] as const) {
  test(`the embedded default (npm start) with its ${closed} closed from the start: it serves, and stops with exit 0`, { timeout: 120_000, skip: !ownNetwork && 'unshare -n not permitted here (needs root or user namespaces)' }, async () => {
    const cwd = join(scratch.path, closed.replaceAll(' ', '-'));
    await mkdir(cwd, { recursive: true });
    const proc = spawn('unshare', ['-n', 'sh', '-c', 'ip link set lo up && exec "$@"', 'sh', NODE, join(ROOT, 'engine/cli/main.ts'), 'serve'], {
      cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1' },
    });
    proc.stdout.destroy(); // the reader gone: every write meets EPIPE
    let stderr = '';
    if (closed === 'stdout and stderr') proc.stderr.destroy();
    else proc.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const exited = new Promise<[number | null, string | null]>((r) => proc.once('exit', (code, signal) => r([code, signal])));
    let ended: [number | null, string | null] | null = null;
    void exited.then((e) => { ended = e; });
    try {
      // Every process ready (the quick start was written before): cluster.json says so.
      for (;;) {
        if (ended) assert.fail(`the server ended while starting: ${JSON.stringify(ended)} ${stderr}`);
        const status = await readFile(join(cwd, 'data', 'cluster.json'), 'utf8').then((t) => JSON.parse(t) as ClusterJson, () => null);
        if (status && status.processes.length && status.processes.every((p) => p.ready)) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(ended, null, 'the server runs');
      proc.kill('SIGTERM');
      assert.deepEqual(await exited, [0, null], `a clean stop ${stderr}`);
    } finally {
      if (!ended) proc.kill('SIGKILL');
    }
  });
}
