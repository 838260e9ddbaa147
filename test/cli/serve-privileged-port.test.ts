// `postern serve` run as a user who may not bind a port below 1024 (no root, no CAP_NET_BIND_SERVICE): the start
// fails, and its line must say why and what to do, not only the kernel's word. Before, it ended with
// `listen EACCES: permission denied 127.0.0.1:25`, which reads like a file permission, and the administrator who
// wrote a unit of their own (or ran it from a shell as the service user) went looking at the data directory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-serve-port-');
const NOBODY = { uid: 65534, gid: 65534 };
const firstUnprivileged = Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim());
const skip = firstUnprivileged !== 1024 && `ip_unprivileged_port_start is ${firstUnprivileged}`;
// Below 1024 and hardly ever bound (the kernel refuses the bind before it looks whether the port is taken).
const LOW = 700 + (process.pid % 250);

async function serveAsNobody(config: string): Promise<{ code: number | null; stderr: string }> {
  await chmod(scratch.path, 0o755);
  await mkdir(join(scratch.path, 'data'), { mode: 0o700 }).catch(() => {});
  await mkdir(join(scratch.path, 'scripts'), { mode: 0o755 }).catch(() => {});
  const { chown } = await import('node:fs/promises');
  await chown(join(scratch.path, 'data'), NOBODY.uid, NOBODY.gid);
  const cfg = await scratch.file('postern.yaml', `dataDir: ./data\nscripts: ./scripts\nworkers: 1\n${config}`);
  await chmod(cfg, 0o644);
  return runCli(['serve', '--config', cfg], { as: NOBODY, timeoutMs: 90_000 });
}

const hint = (port: number): RegExp => new RegExp(`listen EACCES: permission denied 127\\.0\\.0\\.1:${port}: port ${port} is below 1024, which only root or a process with CAP_NET_BIND_SERVICE may bind \\(the systemd unit gives it: AmbientCapabilities=CAP_NET_BIND_SERVICE\\)`);

test('serve as a user without CAP_NET_BIND_SERVICE: an SMTP listener on a port below 1024 fails naming the capability', { skip, timeout: 120_000 }, async () => {
  const r = await serveAsNobody(`listeners:\n  - { name: mx, listen: "127.0.0.1:${LOW}" }\n`);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`listener mx: cannot listen on 127\\.0\\.0\\.1:${LOW}: `), r.stderr);
  assert.match(r.stderr, hint(LOW), r.stderr);
});

test('serve as a user without CAP_NET_BIND_SERVICE: the admin listener on a port below 1024 fails naming the capability', { skip, timeout: 120_000 }, async () => {
  const r = await serveAsNobody(`listeners:\n  - { name: mx, listen: "127.0.0.1:0" }\nadmin: { listen: "127.0.0.1:${LOW}" }\n`);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`admin listener: cannot listen on 127\\.0\\.0\\.1:${LOW}: `), r.stderr);
  assert.match(r.stderr, hint(LOW), r.stderr);
});
