/**
 * One server per data directory: a second `postern serve` on the same configuration is refused, naming
 * the first one's PID, before it touches the spool; the lock of a server killed with SIGKILL is taken over.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { ONE_WORKER, startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { acquireDirectoryLock, DirectoryLockedError, LOCK_FILE } from '../../engine/spool/data-dir-lock.ts';

const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));

interface Served { child: ChildProcess; stderr: string[]; started: Promise<number>; exited: Promise<number | null> }

/** `postern serve` in a child process: `started` resolves with the port once it listens. */
function serve(config: string): Served {
  const child = spawn(process.execPath, [MAIN, 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1' } });
  const stderr: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => stderr.push(l));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const started = new Promise<number>((resolve, reject) => {
    void exited.then((code) => reject(new Error(`server exited ${code}: ${stderr.join('\n')}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = /"msg":"listening"/.test(line) ? /"address":"127\.0\.0\.1:(\d+)"/.exec(line) : null;
      if (m) resolve(Number(m[1]));
    });
  });
  started.catch(() => undefined);
  return { child, stderr, started, exited };
}

/** One worker, a listener on a free port, data and scripts in `dir`: the configuration file's path. */
function writeConfig(dir: string): string {
  const config = join(dir, 'postern.yaml');
  mkdirSync(join(dir, 'scripts')); // named, so it must exist (empty: the built-in rules)
  writeFileSync(config, `
dataDir: ${join(dir, 'data')}
scripts: ${join(dir, 'scripts')}
localDomains: [example.test]
workers: 1
listeners:
  - { name: in, listen: 127.0.0.1:0, limits: { greetingDelayMs: 0 } }
`);
  return config;
}

function kill9(s: Served): Promise<unknown> {
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
  return s.exited;
}

async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 400 && !check(); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(check(), `timed out waiting for ${what}`);
}

test('a second server on the same data directory is refused, naming the first one\'s PID, and leaves its half-received message alone', { timeout: 90_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-lock-'));
  const config = writeConfig(dir);
  const first = serve(config);
  const servers = [first];
  try {
    const port = await first.started;
    // A large message half sent: it is being written to incoming/, which a starting server clears.
    const c = await SmtpTestClient.connect(port);
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.test>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.test>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    c.write(`Subject: big\r\n\r\n${`${'y'.repeat(998)}\r\n`.repeat(1600)}`);
    const incoming = join(dir, 'data', 'spool', 'worker-0', 'incoming'); // the one worker's spool (engine/cluster)
    await until(() => existsSync(incoming) && readdirSync(incoming).length === 1, 'the message to reach incoming/');

    const second = serve(config);
    servers.push(second);
    const code = await Promise.race([second.exited, second.started.then(() => 'listening', () => 'exited')]);
    assert.equal(code, 1, 'the second server does not start');
    assert.match(second.stderr.join('\n'), new RegExp(`in use by another Postern process \\(PID ${first.child.pid}; lock .*${LOCK_FILE}\\)`));
    assert.equal(readdirSync(incoming).length, 1, 'the first server\'s half-received message is still there');

    const end = await c.command('.');
    assert.equal(end.code, 250, end.text);
    await c.quit();

    // Killed with SIGKILL, the first server leaves its lock behind; the next start takes it over.
    await kill9(first);
    assert.equal(existsSync(join(dir, 'data', LOCK_FILE)), true);
    const third = serve(config);
    servers.push(third);
    await third.started;
  } finally {
    await Promise.all(servers.map(kill9));
  }
});

test('a directory lock is exclusive within a process too, is given back by release(), and can lock a subdirectory', () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'postern-lock-')), 'spool', 'journal-1');
  const lock = acquireDirectoryLock(dir);
  assert.throws(() => acquireDirectoryLock(dir), (err: unknown) => err instanceof DirectoryLockedError && err.pid === process.pid);
  lock.release();
  lock.release();
  assert.equal(existsSync(join(dir, LOCK_FILE)), false);
  acquireDirectoryLock(dir).release();
  // A lock left by a process that is gone (a PID that no longer runs) is taken over.
  writeFileSync(join(dir, LOCK_FILE), '999999999 12345\n');
  acquireDirectoryLock(dir).release();
});

/** A server with an admin listener: the warning's test hands its own on to the lock file's test (a cluster's start and stop is much of a test's CPU). */
const WITH_ADMIN = `${ONE_WORKER}admin: { listen: "127.0.0.1:{PORT:admin}" }\n`;
let handed: { c: ClusterProcess; remove(): void } | null = null;
const finish = async (h: { c: ClusterProcess; remove(): void }): Promise<void> => { await h.c.stop(); h.remove(); };
after(async () => { if (handed) await finish(handed); });

test('a data directory other local users can write to is warned about at start, naming it', { timeout: 90_000 }, async () => {
  const dataDir = join(mkdtempSync(join(tmpdir(), 'postern-open-data-')), 'data');
  mkdirSync(dataDir);
  chmodSync(dataDir, 0o777); // made beforehand (a shared volume, a careless mkdir): used as it is
  const c = await startCluster({ config: WITH_ADMIN, dataDir });
  const server = { c, remove: () => rmSync(join(dataDir, '..'), { recursive: true, force: true }) };
  let passed = false;
  try {
    await c.waitFor('the warning', () => c.logs.some((l) => l.level === 40 && String(l.msg).startsWith(`${dataDir}: writable by every local user (mode 777)`)));
    passed = true;
    handed = server;
  } finally {
    if (!passed) await finish(server);
  }
});

test('a symbolic link planted where the lock is written aside is not written through', () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-lock-planted-'));
  const victim = join(dir, 'victim');
  writeFileSync(victim, 'precious\n');
  for (const name of [LOCK_FILE, '.lock']) {
    symlinkSync(victim, join(dir, `${name}.${process.pid}.tmp`));
    const lock = acquireDirectoryLock(dir, name);
    assert.equal(readFileSync(victim, 'utf8'), 'precious\n', name);
    assert.match(readFileSync(join(dir, name), 'utf8'), new RegExp(`^${process.pid} `));
    lock.release();
  }
  rmSync(dir, { recursive: true, force: true });
});

test('a FIFO where a lock goes (the data directory\'s, a worker spool\'s) does not hang the start: taken for a stale lock, and the server stops on SIGTERM', { timeout: 90_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-lock-fifo-'));
  const config = writeConfig(dir);
  mkdirSync(join(dir, 'data', 'spool', 'worker-0'), { recursive: true });
  for (const lock of [join(dir, 'data', LOCK_FILE), join(dir, 'data', 'spool', 'worker-0', LOCK_FILE)]) execFileSync('mkfifo', [lock]);
  const server = serve(config);
  try {
    await server.started;
    assert.match(readFileSync(join(dir, 'data', LOCK_FILE), 'utf8'), new RegExp(`^${server.child.pid} `), 'the lock is the server\'s');
    server.child.kill('SIGTERM');
    assert.equal(await server.exited, 0);
  } finally {
    await kill9(server);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the lock file removed while the server runs is made again (a second server is still refused); one naming another live process makes /readyz fail', { timeout: 90_000 }, async () => {
  // The warning's test's server (its data directory's mode is no matter here), or one of its own.
  const server = handed ?? { c: await startCluster({ config: WITH_ADMIN }), remove: () => undefined };
  handed = null;
  const { c } = server;
  const other = spawn('sleep', ['300'], { stdio: 'ignore' });
  try {
    const lockFile = join(c.dataDir, LOCK_FILE);
    const mine = readFileSync(lockFile, 'utf8');
    const readyz = async (): Promise<{ code: number; body: { checks: Record<string, { ok: boolean; detail?: string }> } }> => {
      const r = await fetch(`http://127.0.0.1:${c.port('admin')}/readyz`);
      return { code: r.status, body: await r.json() as { checks: Record<string, { ok: boolean; detail?: string }> } };
    };
    await c.waitFor('ready', async () => (await readyz()).code === 200);

    rmSync(lockFile); // a cleanup of the folder
    await c.waitFor('the lock made again', () => c.logs.some((l) => /^data directory lock: its file was removed while the server ran; made again/.test(String(l.msg))));
    assert.equal(readFileSync(lockFile, 'utf8'), mine);
    assert.throws(() => acquireDirectoryLock(c.dataDir), (err: unknown) => err instanceof DirectoryLockedError && err.pid !== process.pid, 'a second server is refused');

    writeFileSync(lockFile, `${other.pid} -\n`); // another live process holds it now
    const taken = await c.waitFor('/readyz fails', async () => { const r = await readyz(); return r.code === 503 && r; });
    assert.match(String(taken.body.checks.lock!.detail), new RegExp(`held by process ${other.pid}: two servers use this data directory`));
    writeFileSync(lockFile, mine);
    await c.waitFor('ready again', async () => (await readyz()).code === 200);
  } finally {
    other.kill();
    await finish(server);
  }
});
