/**
 * A listener's port taken by another program when `postern serve` starts (workerChoice: fill, the default: the
 * supervisor binds the socket, a worker listens on it). libuv reports such a bind's EADDRINUSE only at the
 * listen() that follows, and the supervisor never listens: the worker it passed the unbound socket to listened
 * on a port the kernel chose, on every interface. The server said `listening` (on "undefined:NaN"), started,
 * and took SMTP connections on 0.0.0.0:<random> while the configured port served the other program.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ONE_WORKER } from '../helpers/cluster.ts';

const ROOT = new URL('../../', import.meta.url).pathname;

test('a listener\'s port held by another program: serve fails at once, naming the listener and the address, and listens nowhere', { timeout: 90_000 }, async () => {
  const other = net.createServer((s) => s.destroy());
  await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
  const port = (other.address() as net.AddressInfo).port;
  const dir = await mkdtemp(join(tmpdir(), 'postern-port-in-use-'));
  await mkdir(join(dir, 'scripts'));
  await writeFile(join(dir, 'postern.yaml'), `dataDir: ${JSON.stringify(join(dir, 'data'))}\nscripts: ${JSON.stringify(join(dir, 'scripts'))}\n${ONE_WORKER.replace('{PORT:in}', String(port))}`);
  const proc = spawn(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'serve', '--config', join(dir, 'postern.yaml')], {
    cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1' },
  });
  let out = '';
  let stderr = '';
  proc.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
  proc.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  try {
    // It exits, or says it started: what it must not do.
    const started = new Promise<'started'>((resolve) => proc.stdout!.on('data', () => { if (/"msg":"supervisor started"/.test(out)) resolve('started'); }));
    const first = await Promise.race([exited, started]);
    assert.equal(first, 1, `exit 1, not started; it wrote:\n${out}${stderr}`);
    assert.match(stderr, new RegExp(`postern: listener in: cannot listen on 127\\.0\\.0\\.1:${port}: listen EADDRINUSE: address already in use 127\\.0\\.0\\.1:${port}`));
    assert.doesNotMatch(out, /"msg":"listening"/);
  } finally {
    if (proc.exitCode === null) { proc.kill('SIGKILL'); await exited; }
    other.close();
    await rm(dir, { recursive: true, force: true });
  }
});
