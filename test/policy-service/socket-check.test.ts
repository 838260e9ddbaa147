// A policy service's unix socket that `postern serve` could not make (its folder missing, a file in its place, an
// owner or group no one has, a path too long for bind) is refused by `postern check` too, with the lines the
// refused start prints.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-policy-socket-');

test('postern check refuses a policy socket serve cannot make, with the same file:line:col lines, and exits 1', async () => {
  const dir = scratch.path;
  await mkdir(join(dir, 'here'));
  await writeFile(join(dir, 'here', 'taken.sock'), 'not a socket');
  const cfg = await scratch.file('postern.yaml', `dataDir: ./data
policyServices:
  - name: gone
    listen: unix:./nowhere/policy.sock
  - name: taken
    listen: unix:./here/taken.sock
  - name: owned
    listen: unix:./here/owned.sock
    socket: { owner: no-such-user-here, group: no-such-group-here }
  - name: long
    listen: unix:./here/${'x'.repeat(120)}.sock
`);
  const check = await runCli(['check', '--config', cfg]);
  assert.equal(check.code, 1, check.stdout);
  const lines = check.stderr.trim().split('\n');
  assert.deepEqual(lines, [
    `${cfg}:4:13: policyServices[0].listen: cannot listen on unix:${join(dir, 'nowhere', 'policy.sock')}: folder ${join(dir, 'nowhere')} cannot be used (ENOENT)`,
    `${cfg}:6:13: policyServices[1].listen: cannot listen on unix:${join(dir, 'here', 'taken.sock')}: ${join(dir, 'here', 'taken.sock')} exists and is not a socket`,
    `${cfg}:9:22: policyServices[2].socket.owner: no user named no-such-user-here in /etc/passwd`,
    `${cfg}:9:48: policyServices[2].socket.group: no group named no-such-group-here in /etc/group`,
    `${cfg}:11:13: policyServices[3].listen: cannot listen on unix:${join(dir, 'here', `${'x'.repeat(120)}.sock`)}: the path is ${Buffer.byteLength(join(dir, 'here', `${'x'.repeat(120)}.sock`))} bytes, longer than the 107 a unix socket's may be (bind fails with EINVAL): use a shorter one`,
  ]);
  const serve = await runCli(['serve', '--config', cfg], { timeoutMs: 60_000 });
  assert.notEqual(serve.code, 0);
  for (const line of lines) assert.ok(serve.stderr.includes(line), `serve says what check says:\n${serve.stderr}`);
});
