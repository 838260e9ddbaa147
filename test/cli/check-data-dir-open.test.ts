// A data directory other local users may write to (a careless `mkdir -m 777`, a shared volume): `postern serve`
// warns at every start that they could plant files or symbolic links the server reads or writes through, but
// `postern check`, which the administrator runs to find exactly such things, said `OK` and nothing else. It now
// says the server's line, at dataDir's line. Ownership is left to the start (`sudo postern check` of a data
// directory that is the service user's is right, not a finding).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, chown, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-check-open-data-');

test('postern check warns about a data directory every local user may write to, at dataDir\'s line; not about one of the service user checked as root', async () => {
  const data = join(scratch.path, 'data');
  await mkdir(data);
  await chmod(data, 0o777);
  await mkdir(join(scratch.path, 'scripts'));
  const cfg = await scratch.file('postern.yaml', `scripts: ./scripts\ndataDir: ./data\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0" }\n`);
  const open = await runCli(['check', '--config', cfg]);
  assert.equal(open.code, 0, open.stderr);
  assert.deepEqual(open.stderr.trim().split('\n'), [
    `warning: ${cfg}:2:10: dataDir: ${data}: writable by every local user (mode 777): another local user could put files or symbolic links there that the server would read or write through; make it the server user's own (chmod 700 ${data})`,
  ]);

  await chmod(data, 0o700);
  await chown(data, 65534, 65534);
  const asRoot = await runCli(['check', '--config', cfg]);
  assert.equal(asRoot.code, 0, asRoot.stderr);
  assert.equal(asRoot.stderr, '');
});
