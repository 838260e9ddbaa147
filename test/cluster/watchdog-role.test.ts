// The queue process has a watchdog thread too. Its line used to say "worker 0 hung" when the queue process
// hung (seen with a long queue: the log blamed a worker that was fine). It names the kind of process now.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ROOT = new URL('../../', import.meta.url).pathname;

test('a hung queue process is named as the queue process by its watchdog, and killed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-watchdog-'));
  const program = `
    import { Worker } from 'node:worker_threads';
    const w = new Worker(new URL(${JSON.stringify(`file://${ROOT}engine/cluster/watchdog-thread.ts`)}), { workerData: {
      marker: new SharedArrayBuffer(4), heartbeat: new SharedArrayBuffer(4), crashDir: ${JSON.stringify(dir)}, worker: 0, role: 'queue',
      hangMs: 300, mirror: ${JSON.stringify(join(dir, 'running'))}, logBuffer: new SharedArrayBuffer(1024),
    } });
    w.once('online', () => { for (;;); });
  `;
  writeFileSync(join(dir, 'hang.mjs'), program);
  const child = spawn(join(ROOT, 'node_modules/.bin/node'), [join(dir, 'hang.mjs')], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, NODE_NO_WARNINGS: '1' } });
  const guard = setTimeout(() => child.kill('SIGTERM'), 60_000); // a watchdog that never fires fails the test instead of hanging it
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  // 'close', not 'exit': the line written just before the kill may still be unread in the pipe at 'exit'.
  const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.once('close', (_code, sig) => resolve(sig)));
  clearTimeout(guard);
  assert.equal(signal, 'SIGKILL');
  const line = JSON.parse(out.trim().split('\n').at(-1)!) as { msg: string };
  assert.equal(line.msg, 'queue 0 hung: killing it');
});
