// The status socket removed while the server runs (a cleaner of /tmp ageing files out, systemd-tmpfiles, a careless
// `rm data/*.sock`): `postern status` said "not running" (exit 3) for the rest of the server's life, though it ran
// and served mail; an on-call would start a second one. The supervisor makes it again, as it makes its lock file again.
// First, on the same server: its status socket full of connections that sent half a request (status-bad-answers.test.ts
// has what a socket that answers wrongly gets).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { runCli } from '../helpers/cli.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { statusCommand } from '../../engine/cli/status.ts';
import { until } from '../helpers/wait.ts';

/**
 * Each case's first `postern status` is the command line; its further ones call statusCommand in this process (a
 * process each, ~0.3 s of CPU mostly module loading, proved nothing more).
 */
const statusHere = (config: string) => runInProcess(() => statusCommand({ config }));

/** One server for the tests of this file (each leaves it serving, the last stops it). */
let c: ClusterProcess | undefined;
after(() => c?.stop());
const server = async (): Promise<ClusterProcess> => c ?? (c = await startCluster({ config: 'workers: 1\nlocalDomains: [example.test]\nlisteners:\n  - { name: in, listen: "127.0.0.1:{PORT:in}" }\n' }));

test('the status socket full (64 connections sending half a request): one that asks nothing makes room, the status is answered', { timeout: 120_000 }, async () => {
  const c = await server();
  const held: net.Socket[] = [];
  try {
    const config = join(c.dir, 'postern.yaml');
    assert.equal((await runCli(['status', '--config', config])).code, 0);
    // The server's own user (a monitoring loop gone wrong, a shell left open in socat): 64 is the socket's bound.
    let accepted = 0;
    let closed = 0;
    await Promise.all(Array.from({ length: 64 }, () => new Promise<void>((resolve) => {
      const s = net.connect(join(c.dataDir, 'postern.sock'), () => { accepted++; s.write('GET /status HTTP/1.1\r\n'); resolve(); });
      s.on('error', () => resolve()).on('close', () => closed++);
      held.push(s);
    })));
    assert.equal(accepted, 64);
    const r = await statusHere(config);
    assert.equal(r.code, 0, r.stderr);
    await until('a connection that sent half a request closed to make room', () => closed >= 1);
  } finally {
    for (const s of held) s.destroy();
  }
});

test('postern.sock removed, or replaced by a file, while the server runs: made again, postern status answers again', { timeout: 180_000 }, async () => {
  c = await server();
  const config = join(c.dir, 'postern.yaml');
  const socket = join(c.dataDir, 'postern.sock');
  assert.equal((await runCli(['status', '--config', config])).code, 0);

  await rm(socket);
  // Asked once the server said it made the socket again, not polled for it.
  await c.waitFor('its log line', () => c!.logs.some((l) => /status socket: its file was removed .*made again/.test(String(l.msg))), 90_000);
  await c.waitFor('the status socket made again', async () => (await statusHere(config)).code === 0, 90_000);

  // Something else in its place (a file a careless restore put there): replaced too.
  await rm(socket);
  await writeFile(socket, 'not a socket\n');
  await c.waitFor('its log line', () => c!.logs.some((l) => /status socket: its file was replaced .*made again/.test(String(l.msg))), 90_000);
  await c.waitFor('the status socket made again over a file', async () => (await statusHere(config)).code === 0, 90_000);
});

test('no status socket while a server holds the data directory (starting: the socket comes once every process is ready; or removed, before it is made again): exit 4 naming that process, not "not running"', { timeout: 120_000 }, async () => {
  // The server of the tests above (its socket made again): a start and stop fewer.
  const s = await server();
  const pid = s.proc.pid!;
  try {
    // Stopped, so that it cannot make the socket again meanwhile: the state of a start before its socket is made.
    process.kill(pid, 'SIGSTOP');
    let r;
    try {
      await rm(join(s.dataDir, 'postern.sock'), { force: true });
      r = await runCli(['status', '--config', join(s.dir, 'postern.yaml')]);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    assert.equal(r.code, 4, r.stderr);
    assert.doesNotMatch(r.stderr, /not running/);
    assert.match(r.stderr, new RegExp(`process ${pid}`));
  } finally {
    await s.stop();
  }
});
