// `postern … | head`: the reader leaves before the command has written everything. The command ends
// quietly (exit 0, nothing on stderr), as a shell tool does, instead of a stack trace about EPIPE.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';

const MAIN = new URL('../../engine/cli/main.ts', import.meta.url).pathname;

test('a command whose stdout reader is gone ends quietly with exit status 0', async () => {
  // The read end is closed before the command starts: its first write meets EPIPE.
  const child = spawn(process.execPath, [MAIN, 'config', 'describe'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1' } });
  child.stdout.destroy();
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('close', (c, s) => resolve([c, s])));
  assert.equal(stderr, '', 'no stack trace');
  assert.deepEqual([code, signal], [0, null]);
});
