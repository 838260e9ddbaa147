// The data directory as an administrator can get it wrong: `postern check` (run by the systemd unit before
// each start) refuses one a start could not use, naming the file and line of `dataDir`; `postern queue` on a
// data directory no server has used says so instead of only "Mail queue is empty"; root does not start a server on
// the data directory of the server's own user.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { chown, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';

const root = await mkdtemp(join(tmpdir(), 'postern-datadir-'));
after(() => rm(root, { recursive: true, force: true }));

async function config(name: string, dataDir: string): Promise<string> {
  const dir = join(root, name);
  await mkdir(join(dir, 'scripts'), { recursive: true });
  const file = join(dir, 'postern.yaml');
  await writeFile(file, `# ${name}\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0" }\ndataDir: ${dataDir}\n`);
  return file;
}

test('check and serve: a dataDir that is a file, or lies under one, is refused with the same file:line:col; one still to be created is fine', async () => {
  const file = await config('file', './data');
  await writeFile(join(root, 'file', 'data'), 'not a folder\n');
  let r = await runCli(['check', '--config', file]);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, `${file}:4:10: dataDir: ${join(root, 'file', 'data')} is not a folder\n`);

  const under = await config('under', './data/inner');
  await writeFile(join(root, 'under', 'data'), 'not a folder\n');
  r = await runCli(['check', '--config', under]);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, `${under}:4:10: dataDir: ${join(root, 'under', 'data', 'inner')} cannot be created: ${join(root, 'under', 'data')} is not a folder\n`);
  // A start is refused with the same line (it used to be a bare `ENOTDIR: not a directory, mkdir …`).
  const serve = await runCli(['serve', '--config', under], { timeoutMs: 30_000 });
  assert.equal(serve.code, 1);
  assert.equal(serve.stderr, `postern: configuration refused:\n${r.stderr}`);

  const fresh = await config('fresh', './not/yet/there');
  r = await runCli(['check', '--config', fresh]);
  assert.equal(r.stderr, '');
  assert.equal(r.code, 0);
});

test('queue list on a data directory no server has used: empty, and a note on stderr naming the spool it looked for', async () => {
  const file = await config('unused', './data');
  const r = await runCli(['queue', 'list', '--config', file]);
  assert.equal(r.code, 0);
  assert.equal(r.stdout, 'Mail queue is empty\n');
  assert.equal(r.stderr, `postern: no spool at ${join(root, 'unused', 'data', 'spool')}: no server has run with this dataDir\n`);
});

test('serve as root on a data directory another user owns (the server\'s own): refused at dataDir\'s line before anything is written there; check is not', { skip: process.getuid?.() !== 0 && 'needs root' }, async () => {
  // An administrator's `sudo postern serve` on /var/lib/postern: its spool, locks and crash records would be
  // root's (mode 0600), and the server run as `postern` afterwards could not start, nor deliver what root accepted.
  const file = await config('theirs', './data');
  const dataDir = join(root, 'theirs', 'data');
  await mkdir(dataDir, { mode: 0o700 });
  await chown(dataDir, 65534, 65534);
  const serve = await runCli(['serve', '--config', file], { timeoutMs: 30_000 });
  assert.equal(serve.code, 1);
  assert.equal(serve.stderr, `postern: configuration refused:\n${file}:4:10: dataDir: ${dataDir} belongs to uid 65534 (nobody): run the server as that user, not as root: what root wrote there (mode 0600) would stop that user's server, and the mail root accepted with it\n`);
  assert.deepEqual(await readdir(dataDir), [], 'nothing written');
  const check = await runCli(['check', '--config', file]);
  assert.equal(check.code, 0, `an administrator's sudo postern check is not refused: ${check.stderr}`);
});
