// What `postern serve` and `postern queue` create in the data directory is the server user's only, whatever the
// umask they are started with: an administrator's shell with umask 000 and a data directory made with
// `install -d` (0755) left fences/ and spool/operations/ writable by every local user (who could then plant
// crash records that fence a script, forge `postern queue` records the server logs as someone else's, or put a
// symbolic link where a worker opens its running-call mirror with truncation: a journal segment, say), the
// status files writable, and the status socket open to every local user.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, lstat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { spawnSync } from 'node:child_process';
import { lstatSync } from 'node:fs';
import { startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { listenOwnerOnly } from '../../engine/admin/unix-socket-path.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

const NOBODY = { uid: 65534, gid: 65534 };
const isRoot = process.getuid?.() === 0;
const outer = await mkdtemp(join(tmpdir(), 'postern-modes-'));
let c: ClusterProcess | undefined;
const umask = process.umask(0o000); // inherited by the server and the commands this test starts
after(async () => {
  process.umask(umask);
  await c?.stop();
  await rm(outer, { recursive: true, force: true });
});

/** Every path under `dir` with its permission bits. */
async function modes(dir: string): Promise<Array<[string, number]>> {
  const out: Array<[string, number]> = [];
  for (const name of await readdir(dir, { recursive: true })) {
    const st = await lstat(join(dir, name)).catch(() => null); // gone meanwhile (a temporary file)
    if (st) out.push([name, st.mode & 0o777]);
  }
  return out;
}

test('under umask 000, in a 0755 data directory: nothing the server or `postern queue` makes is open to group or others; another user cannot ask the status socket', async () => {
  await chmod(outer, 0o755);
  const dataDir = join(outer, 'data');
  await mkdir(dataDir, { mode: 0o755 });
  await chmod(dataDir, 0o755); // as `install -d -o postern /var/lib/postern` leaves it
  c = await startCluster({
    dataDir,
    config: `
workers: 1
localDomains: [example.test]
spool: { receivingMemoryBytes: 1000 }
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", limits: { greetingDelayMs: 0 } }
`,
    scripts: { 'mailfrom.js': 'export default () => {};' },
  });
  await submitMessage(c.port('in'), 'a@example.net', ['b@example.test']);
  await submitMessage(c.port('in'), 'a@example.net', ['b@example.test'], `Subject: big\r\n\r\n${'x'.repeat(100_000)}\r\n`); // its own file
  const config = join(c.dir, 'postern.yaml');
  const held = await runCli(['queue', 'hold', '--all', '--config', config]);
  assert.equal(held.code, 0, held.stderr);
  await c.waitFor('cluster.json and status.json', async () => (await readdir(dataDir)).includes('status.json') && (await readdir(dataDir)).includes('cluster.json'));

  const open = (await modes(dataDir)).filter(([, mode]) => mode & 0o077);
  assert.deepEqual(open.map(([name, mode]) => `${name} ${mode.toString(8)}`), [], 'everything in the data directory is the server user\'s only');

  if (!isRoot) return; // another user to try the socket with: only as root
  const readable = join(outer, 'postern.yaml'); // a copy another user can read
  await writeFile(readable, await readFile(config, 'utf8'));
  await chmod(readable, 0o644);
  const stranger = await runCli(['status', '--config', readable], { as: NOBODY });
  assert.equal(stranger.stdout, '', 'another local user gets no status');
  assert.equal(stranger.code, 1, 'not "not running" (3): the server runs');
  assert.match(stranger.stderr, /permission denied.*as the server's user/i);
  const owner = await runCli(['status', '--config', readable]);
  assert.equal(owner.code, 0, owner.stderr);
  await c.stop(); // not left idle through the tests below
});

test('a unix socket made by listenOwnerOnly (the status socket, a policy service\'s before its chown and chmod) is 0600 the moment it listens, under umask 000; the umask is left as it was', async () => {
  const path = join(outer, 'owner-only.sock');
  const server = createServer();
  const mode = await new Promise<number>((resolve) => listenOwnerOnly(server, path, () => resolve(lstatSync(path).mode & 0o777)));
  server.close();
  assert.equal(mode.toString(8), '600');
  assert.equal(process.umask(), 0o000);
});

/**
 * One server for the two tests below: its data directory every local user may write, with the temporary files of
 * an older release's killed processes (and of a live process) in it before it starts.
 */
let shared: ClusterProcess | undefined;
/** Its data directory's names once the supervisor had started (what the fourth test looks at). */
let namesAtStart: string[] = [];
after(() => shared?.stop());
/** The temporary files of processes that are gone, made before it started. */
let leftovers: string[] = [];
async function sharedServer(): Promise<ClusterProcess> {
  if (!shared) {
    const dataDir = join(outer, 'shared');
    await mkdir(dataDir, { mode: 0o777 });
    await chmod(dataDir, 0o777); // no sticky bit: the kernel's protected_symlinks does not cover it
    const gone = spawnSync('true').pid!; // a process that has exited
    leftovers = [`cluster.json.${gone}.tmp`, `status.json.${gone}.tmp`];
    for (const name of leftovers) await writeFile(join(dataDir, name), '{"cut": ', { mode: 0o600 });
    await writeFile(join(dataDir, `cluster.json.${process.pid}.tmp`), '{}', { mode: 0o600 });
    shared = await startCluster({
      dataDir,
      config: 'workers: 1\nlocalDomains: [example.test]\nlisteners:\n  - { name: in, listen: "127.0.0.1:{PORT:in}", limits: { greetingDelayMs: 0 } }\n',
    });
    namesAtStart = await readdir(dataDir);
  }
  return shared;
}

test('a data directory every local user may write (warned, not refused: shared volumes): a symbolic link planted at the name cluster.json is written under is not written through', async () => {
  const victim = join(outer, 'victim');
  await writeFile(victim, 'precious\n', { mode: 0o600 }); // any file the server's user may write: a journal segment, say
  const d = await sharedServer();
  assert.ok(d.logs.some((l) => String(l.msg).includes('writable by every local user')), 'the server warns');
  // The supervisor's pid is the server's: the name it rewrote cluster.json through was `cluster.json.<pid>.tmp`.
  await symlink(victim, join(d.dataDir, `cluster.json.${d.proc.pid}.tmp`));
  const worker = await workerPid(d, 0);
  process.kill(worker, 'SIGKILL'); // the supervisor rewrites cluster.json: the worker died, then its replacement
  await d.waitFor('the replacement', async () => {
    const p = (await d.cluster()).processes.find((x) => x.role === 'worker');
    return p?.ready && p.pid !== worker;
  });
  assert.equal(await readFile(victim, 'utf8'), 'precious\n', 'not written through the link');
});

test('temporary files an older release\'s killed supervisor and queue process left (cluster.json.<pid>.tmp, status.json.<pid>.tmp) are removed at start; a live process\'s are not', async () => {
  const d = await sharedServer();
  try {
    const names = namesAtStart;
    for (const name of leftovers) assert.ok(!names.includes(name), `${name} removed: ${names.join(' ')}`);
    assert.ok(names.includes(`cluster.json.${process.pid}.tmp`), 'a running process\'s is left');
  } finally {
    await d.stop();
  }
});
