// `postern` keeps the code Node compiled for it (bin/compile-cache.js) in a folder of the user's own, never in one
// another user can write (bytecode planted there would run as this user), and not when turned off.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const BIN = new URL('../../bin/postern.js', import.meta.url).pathname;

/** `postern --version` with this environment (the test run's own NODE_COMPILE_CACHE taken out). */
async function version(env: Record<string, string>): Promise<void> {
  const { NODE_COMPILE_CACHE: _ignored, ...rest } = process.env;
  const { stdout } = await promisify(execFile)(process.execPath, [BIN, '--version'], { env: { ...rest, XDG_CACHE_HOME: '', ...env } });
  assert.match(stdout, /^\d+\.\d+\.\d+/);
}

/** The files Node cached under `dir` (in its per-version, per-user subfolders). */
async function cached(dir: string): Promise<number> {
  let n = 0;
  for (const sub of await readdir(dir).catch(() => [])) n += (await readdir(join(dir, sub)).catch(() => [])).length;
  return n;
}

test('the compile cache: in ~/.cache/postern (0700), not in a folder others may write, not when turned off', async () => {
  const root = await mkdtemp(join(tmpdir(), 'postern-compile-cache-'));
  try {
    const home = join(root, 'home');
    await mkdir(home, { mode: 0o755 });
    await version({ HOME: home });
    const folder = join(home, '.cache', 'postern');
    assert.equal((await stat(folder)).mode & 0o777, 0o700);
    assert.ok(await cached(folder) > 10, 'the compiled modules are kept');

    // A home others may write (a careless HOME=/srv/shared): another user could swap the folder for theirs.
    const open = join(root, 'open');
    await mkdir(open);
    await chmod(open, 0o777);
    await version({ HOME: open });
    assert.equal(await cached(join(open, '.cache', 'postern')), 0, 'no cache under a world-writable folder');

    const off = join(root, 'off');
    await mkdir(off, { mode: 0o755 });
    await version({ HOME: off, NODE_DISABLE_COMPILE_CACHE: '1' });
    assert.equal(await cached(join(off, '.cache', 'postern')), 0, 'NODE_DISABLE_COMPILE_CACHE=1');
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
