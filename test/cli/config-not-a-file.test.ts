// postern.yaml given as something other than a regular file (`--config <(generate)`, a FIFO): `postern check` reads
// what comes (a generated configuration is worth checking) but says that serve will not run from it; `postern
// serve` refuses it at once with the reason, since each of its processes and each reload reads the file again
// (it used to start, and its first worker died reading a pipe already drained, or to wait for a writer for ever).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-config-fifo-');

test('a FIFO as postern.yaml: check reads it and warns, serve refuses it at once naming why', async () => {
  const fifo = join(scratch.path, 'postern.yaml');
  execFileSync('mkfifo', [fifo]);
  const text = `dataDir: ${join(scratch.path, 'data')}\nlisteners: [{ name: mx, listen: "127.0.0.1:0" }]\n`;
  const [check] = await Promise.all([runCli(['check', '--config', fifo]), writeFile(fifo, text)]);
  assert.equal(check.code, 0, check.stderr);
  assert.equal(check.stdout, `${fifo}: OK (1 listener)\n`);
  assert.match(check.stderr, /^warning: .*postern\.yaml: not a regular file: checked as read now, but postern serve refuses it \(each process of postern serve, and each reload, reads it again: give it a file\)$/m);

  // No writer: a blocking read would wait for ever (the guard kills it, and the test fails on its code).
  const serve = await runCli(['serve', '--config', fifo], { timeoutMs: 30_000 });
  assert.equal(serve.code, 1, serve.stderr);
  assert.match(serve.stderr, /configuration refused:\n.*postern\.yaml: cannot read: not a regular file \(each process of postern serve/);
});
