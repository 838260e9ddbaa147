// `postern check` without --config checks the embedded default as `postern serve` (`npm start`) would start it: on
// a first start serve makes the development PKI its listeners use, so check must not refuse its absence, and must
// not make it either (check writes nothing into the data directory).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-check-embedded-');

test('check of the embedded default before the first start: OK with a note, and no data directory made', async () => {
  const cwd = join(scratch.path, 'fresh');
  await mkdir(cwd);
  const check = await runCli(['check'], { cwd });
  assert.equal(check.code, 0, check.stderr);
  assert.equal(check.stdout, '(embedded default): OK (3 listeners)\n');
  assert.match(check.stderr, /^warning: .*\/data\/pki: no development PKI yet: postern serve makes it on its first start/);
  assert.equal(existsSync(join(cwd, 'data')), false, 'check wrote nothing');
});

test('check of the embedded default after the first start: the PKI there is checked as it is', async () => {
  const cwd = join(scratch.path, 'started');
  await mkdir(join(cwd, 'data', 'pki'), { recursive: true });
  for (const name of ['ca.crt', 'ca.key', 'ca.crl', 'server.crt', 'server.key']) await writeFile(join(cwd, 'data', 'pki', name), 'not PEM\n');
  const check = await runCli(['check'], { cwd });
  assert.equal(check.code, 1);
  assert.match(check.stderr, /^\(embedded default\):11:13: listeners\[0\]\.tls\.cert: .*\/data\/pki\/server\.crt: /m);
});
