// Postern as an administrator installs it: `npm pack`, the tarball installed into a fresh prefix, and the
// installed `postern` command run from a folder that has nothing to do with the package: --version,
// check, serve, a message sent, SIGTERM → exit 0 with the message still in the spool.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cp, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { readFileSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { submitMessage } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { OLD_NODE } from '../helpers/old-node.ts';

const REPO = new URL('../..', import.meta.url).pathname;

/**
 * Where the tarball is installed: a memory file system (tmpfs) if this machine has one that runs programs and has
 * room, else the temporary folder. npm writes some 14,000 files: on a disk's file system that took twice its CPU.
 */
function installBase(): string {
  try {
    const shm = readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[1] === '/dev/shm');
    const { bavail, bsize } = statfsSync('/dev/shm');
    if (shm?.[2] === 'tmpfs' && !shm[3]!.split(',').includes('noexec') && bavail * bsize > 2 ** 30) return '/dev/shm';
  } catch { /* no /proc or no /dev/shm */ }
  return tmpdir();
}

let root: string;
let postern: string;
before(async () => {
  root = await mkdtemp(join(installBase(), 'postern-install-'));
  const pack = spawnSync('npm', ['pack', '--silent', '--pack-destination', root], { cwd: REPO, encoding: 'utf8' });
  assert.equal(pack.status, 0, pack.stderr);
  const tarball = join(root, pack.stdout.trim().split('\n').at(-1)!);
  // The dependencies come from npm's cache, filled by the `npm ci` that prepared this clone.
  const install = spawnSync('npm', ['install', '-g', '--prefix', join(root, 'prefix'), '--prefer-offline', '--no-audit', '--no-fund', tarball],
    { cwd: root, encoding: 'utf8' });
  assert.equal(install.status, 0, install.stderr);
  postern = join(root, 'prefix', 'bin', 'postern');
});
after(() => rm(root, { recursive: true, force: true }));

/** The environment of an administrator's shell: none of the npm_* variables of the `npm test` running this. */
const SHELL_ENV = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('npm_') && k !== 'INIT_CWD'));

function run(args: string[], cwd: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(postern, args, { cwd, encoding: 'utf8', timeout: 60_000, env: SHELL_ENV });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('the packed tarball installs a postern command that checks, serves and stops cleanly from any folder', async () => {
  const site = await mkdtemp(join(root, 'site-'));
  const version = run(['--version'], site);
  assert.equal(version.code, 0, version.stderr);
  assert.match(version.stdout.trim(), /^\d+\.\d+\.\d+/);

  await writeFile(join(site, 'postern.yaml'), [
    'hostname: mx.example.test',
    'dataDir: ./data',
    'workers: 1',
    'localDomains: [example.test]',
    'listeners:',
    '  - name: inbound',
    '    listen: 127.0.0.1:0',
    '    tls: { mode: none }',
    '',
  ].join('\n'));
  const check = run(['check', '--config', 'postern.yaml'], site);
  assert.equal(check.code, 0, check.stdout + check.stderr);

  const server = spawn(postern, ['serve', '--config', 'postern.yaml'], { cwd: site, stdio: ['ignore', 'pipe', 'pipe'], env: SHELL_ENV });
  let stderr = '';
  let stdoutAll = '';
  server.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const exited = new Promise<number | null>((resolve) => server.once('exit', (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    let buffered = '';
    server.stdout.setEncoding('utf8').on('data', (d: string) => {
      buffered += d; stdoutAll += d;
      const m = /"address":"127\.0\.0\.1:(\d+)"/.exec(buffered);
      if (m) resolve(Number(m[1]));
    });
    void exited.then((code) => reject(new Error(`serve exited (${code}) before listening: ${stderr}`)));
  });

  let queueId: string;
  try {
    // The supervisor listens before its workers have loaded (on a loaded machine, longer than a client
    // waits for a greeting): send once every process says it is ready.
    await until('every process of postern serve ready', async () => {
      const status = JSON.parse(await readFile(join(site, 'data', 'cluster.json'), 'utf8').catch(() => '{}')) as { processes?: Array<{ ready: boolean }> };
      return !!status.processes?.length && status.processes.every((p) => p.ready);
    }, { timeoutMs: 120_000 });
    queueId = await submitMessage(port, 'sender@example.net', ['someone@example.test']);
  } finally {
    server.kill('SIGTERM');
  }
  assert.equal(await exited, 0, `${stderr}\n${stdoutAll}`);

  const list = run(['queue', 'list', '--config', 'postern.yaml', '--json'], site);
  assert.equal(list.code, 0, list.stderr + list.stdout);
  assert.ok(list.stdout.includes(queueId), `the accepted message ${queueId} is still in the spool after the stop: ${list.stdout}`);
  assert.ok((await readdir(site)).includes('data'), 'data lives where the configuration says, not in the package');
});


test('on a Node older than 24 the command re-runs itself on the pinned Node 24, or says what it needs', { skip: !OLD_NODE && 'no Node older than 24 on this machine' }, async () => {
  const pinned = spawnSync(OLD_NODE!, [postern, '--version'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(pinned.status, 0, pinned.stderr);
  assert.match(pinned.stdout.trim(), /^\d+\.\d+\.\d+/);

  // Without the optional dependency (another platform, or --omit=optional): a clear message, exit 1.
  const bare = await mkdtemp(join(root, 'bare-'));
  await cp(join(REPO, 'bin'), join(bare, 'bin'), { recursive: true });
  const lacking = spawnSync(OLD_NODE!, [join(bare, 'bin', 'postern.js'), '--version'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(lacking.status, 1);
  assert.match(lacking.stderr, /needs Node\.js 24 or newer, this is v\d+/);
  assert.doesNotMatch(lacking.stderr, /ERR_UNKNOWN_FILE_EXTENSION|at /);

  // In a clone the npm scripts run the same entry: `npm start` on that Node says the same, not ERR_UNKNOWN_FILE_EXTENSION.
  await cp(join(REPO, 'engine'), join(bare, 'engine'), { recursive: true });
  await cp(join(REPO, 'package.json'), join(bare, 'package.json'));
  const oldNodePath = { ...SHELL_ENV, PATH: `${join(OLD_NODE!, '..')}:/usr/bin:/bin` };
  for (const script of [['start'], ['run', 'postern', '--', '--version'], ['run', 'check']]) {
    const npm = spawnSync('npm', script, { cwd: bare, encoding: 'utf8', timeout: 60_000, env: oldNodePath });
    assert.notEqual(npm.status, 0, `npm ${script.join(' ')}`);
    assert.match(npm.stderr, /needs Node\.js 24 or newer, this is v\d+/, `npm ${script.join(' ')}: ${npm.stderr}`);
    assert.doesNotMatch(npm.stderr, /ERR_UNKNOWN_FILE_EXTENSION/);
  }
});

test('every file of examples/ that docs/operations.md tells an administrator to install is in the installed package', async () => {
  const doc = await readFile(join(REPO, 'docs', 'operations.md'), 'utf8');
  const named = [...new Set([...doc.matchAll(/examples\/[\w.-]+\/[\w.-]+/g)].map((m) => m[0]))];
  assert.ok(named.length >= 3, `the unit, the logrotate file and the fail2ban filter: ${named.join(', ')}`);
  const installed = join(root, 'prefix', 'lib', 'node_modules', 'postern');
  const missing = [];
  for (const file of named) if (!(await readFile(join(installed, file)).then(() => true, () => false))) missing.push(file);
  assert.deepEqual(missing, [], `not in the tarball (package.json "files")`);
});

const SYSTEMD_ANALYZE = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => spawnSync(p, ['--version']).status === 0);

test('the example systemd unit passes systemd-analyze verify, with its log-file lines on too', { skip: !SYSTEMD_ANALYZE && 'systemd-analyze not installed' }, async () => {
  const unit = join(REPO, 'examples', 'systemd', 'postern.service');
  const r = spawnSync(SYSTEMD_ANALYZE!, ['verify', unit], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  // verify reports unknown keys and bad values on stderr without failing; none may appear.
  assert.equal(r.stderr.split('\n').filter((l) => l.includes('postern.service')).join('\n'), '');
  // The same with the commented-out log-file lines on (docs/operations.md, "Log rotation").
  const text = await readFile(unit, 'utf8');
  assert.match(text, /^#StandardOutput=append:\/var\/log\/postern\/postern\.log$/m);
  assert.match(text, /^#LogsDirectory=postern$/m);
  const withFile = join(root, 'postern.service');
  await writeFile(withFile, text.replace(/^#(StandardOutput|LogsDirectory)=/gm, '$1='));
  const f = spawnSync(SYSTEMD_ANALYZE!, ['verify', withFile], { encoding: 'utf8' });
  assert.equal(f.status, 0, f.stderr);
  assert.equal(f.stderr.split('\n').filter((l) => l.includes('postern.service')).join('\n'), '');
});
