// `postern check` binds nothing, so it cannot know whether a port is free; it can tell, though, that the user
// running it could not bind a port below 1024 (no root, no CAP_NET_BIND_SERVICE), where a start as that user fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { chmod, chown, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-check-port-');
const NOBODY = { uid: 65534, gid: 65534 };
// A container may let everyone bind every port (net.ipv4.ip_unprivileged_port_start=0): nothing to warn about there.
const firstUnprivileged = Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim());

test('a listener on port 25 checked by a user who cannot bind it: a warning naming the key; none as root', { skip: firstUnprivileged !== 1024 && `ip_unprivileged_port_start is ${firstUnprivileged}` }, async () => {
  await chmod(scratch.path, 0o755);
  // The service user's (0777 would be a warning of its own: test/cli/check-data-dir-open.test.ts).
  await mkdir(join(scratch.path, 'data'), { mode: 0o700 });
  await chown(join(scratch.path, 'data'), NOBODY.uid, NOBODY.gid);
  const cfg = await scratch.file('postern.yaml', `dataDir: ./data
listeners:
  - { name: mx, listen: "127.0.0.1:25" }
  - { name: high, listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:80" }
`);
  await chmod(cfg, 0o644);
  const user = await runCli(['check', '--config', cfg], { as: NOBODY });
  assert.equal(user.code, 0, user.stderr);
  assert.deepEqual(user.stderr.trim().split('\n'), [
    // At the line of the key, as every other line of check (the file named: an ExecStartPre's journal lines too).
    `warning: ${cfg}:3:25: listeners[0].listen: port 25 is below 1024: this user cannot bind it (no root, no CAP_NET_BIND_SERVICE), so postern serve run like this check would fail (EACCES)`,
    `warning: ${cfg}:5:18: admin.listen: port 80 is below 1024: this user cannot bind it (no root, no CAP_NET_BIND_SERVICE), so postern serve run like this check would fail (EACCES)`,
  ]);
  const root = await runCli(['check', '--config', cfg]);
  assert.equal(root.stderr, '');
  assert.equal(root.code, 0);
});
