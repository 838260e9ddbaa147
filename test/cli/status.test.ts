// `postern status` as monitoring uses it, against a real `postern serve`: it asks the running server (not
// a file it may have left behind), survives a configuration file with errors, reports pending restarts
// against the listeners actually bound (an unrelated reload does not clear them), and says "not running"
// with exit 3 once the server is gone.
import { test, after } from 'node:test';
// (the cluster helpers start `postern serve` as a child process)
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runningCall } from '../../engine/sandbox/running-call.ts';
import { prepareScript } from '../../engine/sandbox/script-source.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { statusCommand } from '../../engine/cli/status.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
let c: ClusterProcess | undefined;
after(() => c?.stop());

/** `postern status`; `env`: more environment. */
function status(config: string, env: Record<string, string> = {}): Status {
  const r = spawnSync(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', config], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  return { code: r.status, json: jsonOf(r.stdout), stderr: r.stderr };
}
type Status = { code: number | null; json: Record<string, unknown> | null; stderr: string };
function jsonOf(stdout: string): Record<string, unknown> | null {
  try { return JSON.parse(stdout) as Record<string, unknown>; } catch { return null; }
}
/**
 * The same command's function in this process: for a case's further asks, polls and set-up checks, where a process
 * each (~0.5 s of CPU, mostly module loading) proves nothing more than the case's own command line.
 */
async function statusHere(config: string): Promise<Status> {
  const r = await runInProcess(() => statusCommand({ config }));
  return { code: r.code, json: jsonOf(r.stdout), stderr: r.stderr };
}

test('running, broken configuration, pending restart after an unrelated reload, stopped', async () => {
  c = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", limits: { greetingDelayMs: 0 } }
`,
    scripts: { 'mailfrom.js': 'export default () => {};' },
  });
  const config = join(c.dir, 'postern.yaml');
  const running = status(config);
  assert.equal(running.code, 0, running.stderr);
  const cluster = running.json!.cluster as { pid: number; processes: Array<{ role: string; ready: boolean; restarts: number; startedAt: string }>; fences: unknown[] };
  assert.equal(cluster.pid, c.proc.pid);
  // What an on-call reads first: every process ready and how often it was replaced, fenced scripts, the queue.
  assert.deepEqual(cluster.processes.map((p) => [p.role, p.ready, p.restarts]), [['worker', true, 0], ['queue', true, 0]]);
  // Each process's start is a time of this run (it was shown as 1970: a monotonic reading taken for a date).
  const serverStart = Date.parse(String((running.json!.cluster as { startedAt: string }).startedAt));
  for (const p of cluster.processes) {
    const at = Date.parse(p.startedAt);
    assert.ok(at >= serverStart - 1000 && at <= Date.now(), `${p.role} started at ${p.startedAt}, the server at ${new Date(serverStart).toISOString()}`);
  }
  assert.deepEqual(cluster.fences, []);
  assert.equal(running.json!.summary, '1/1 workers ready, 0 restarts; no fenced script; last reload ok; queue 0');
  assert.deepEqual(running.json!.pendingRestart, []);
  assert.deepEqual(running.json!.queue, { messages: 0, held: 0, oldestAgeSeconds: 0 });
  await submitMessage(c.port('in'), 'a@example.net', ['b@example.test']); // no delivery section: it stays queued
  const withMail = (await statusHere(config)).json!;
  const queued = withMail.queue as { messages: number; held: number; oldestAgeSeconds: number };
  assert.deepEqual([queued.messages, queued.held], [1, 0], 'the worker\'s spool counts');
  assert.ok(queued.oldestAgeSeconds > 0);
  assert.match(String(withMail.summary), /; queue 1, oldest \d+ s$/);

  // A listener moved on disk: a restart is pending, and stays pending after an unrelated reload.
  const good = await readFile(config, 'utf8');
  const portMoved = good.replace(/listen: "127\.0\.0\.1:\d+"/, 'listen: "127.0.0.1:1"');
  // Padded with empty lines to the file's length: a shorter one is taken only once unchanged for 2 s, as a file cut short.
  const moved = portMoved + '\n'.repeat(Math.max(0, good.length - portMoved.length));
  await writeFile(config, moved);
  await c.waitFor('the reload of the move', () => c!.logs.some((l) => String(l.msg).startsWith('configuration change needs a restart')));
  const reported = await c.waitFor('the move to be reported', async () => {
    const s = (await statusHere(config)).json;
    return (s?.pendingRestart as string[] | undefined)?.some((p) => p.includes('moves')) ? s : null;
  });
  const generation = reported.generation as number;
  const reloads = c.logs.filter((l) => l.msg === 'reloaded').length;
  await writeFile(join(c.dir, 'scripts', 'mailfrom.js'), 'export default () => { return accept(); };');
  await c.waitFor('the script reload logged', () => c!.logs.filter((l) => l.msg === 'reloaded').length > reloads);
  const after = await c.waitFor('the script reload', async () => {
    const s = (await statusHere(config)).json;
    return (s?.generation as number) > generation ? s : null;
  });
  assert.ok((after.pendingRestart as string[]).some((p) => p.startsWith('listener in moves from')), JSON.stringify(after.pendingRestart));

  // A broken file: no crash, the errors on stderr, the running server's state with the refused reload.
  await writeFile(config, `${moved}\nlisteners: [ oops\n`);
  await c.waitFor('the refusal logged', () => c!.logs.some((l) => String(l.msg).startsWith('reload refused')));
  const broken = await c.waitFor('the refused reload', async () => {
    const s = await statusHere(config);
    return s.code === 2 ? s : null;
  });
  assert.match(broken.stderr, /the configuration has errors/);
  assert.match(String(broken.json!.summary), /; LAST RELOAD REFUSED: [^;]*postern\.yaml/);
  assert.ok(Array.isArray(broken.json!.lastError) && (broken.json!.lastError as string[]).some((e) => e.includes('postern.yaml')));
  assert.doesNotMatch(broken.stderr, /\n\s+at /, 'no stack trace');

  const exited = new Promise((resolve) => c!.proc.once('exit', resolve));
  c.proc.kill('SIGTERM');
  await exited;
  const stopped = status(config);
  assert.equal(stopped.code, 3);
  assert.match(stopped.stderr, /not running/);
  assert.equal(stopped.json, null, 'no stale status printed');
  // Stopped, with a broken file: still "not running" (exit 3), the errors shown, no running server claimed.
  await writeFile(config, `${moved}\nlisteners: [ oops\n`);
  const stoppedBroken = await statusHere(config);
  assert.equal(stoppedBroken.code, 3);
  assert.match(stoppedBroken.stderr, /the configuration has errors[^]*not running/);
  assert.doesNotMatch(stoppedBroken.stderr, /the running server/);
});

/**
 * One server for the three tests below (each costs a `postern serve` start and stop otherwise): it leaves it as it
 * found it (resumed; its worker back), the last one stops it. Its data directory's socket path is too long for a
 * unix socket address (the second test's case), which the others ask through as well.
 */
let shared: { server: ClusterProcess; home: string } | undefined;
after(async () => { await shared?.server.stop(); if (shared) await rm(shared.home, { recursive: true, force: true }); });
async function sharedServer(): Promise<ClusterProcess> {
  if (!shared) {
    const home = await mkdtemp(join(tmpdir(), 'postern-status-'));
    // sun_path holds 108 bytes: <dataDir>/postern.sock is longer than that here.
    const dataDir = join(home, 'a-data-directory-with-a-long-name'.repeat(3));
    assert.ok(Buffer.byteLength(join(dataDir, 'postern.sock')) > 108);
    shared = { home, server: await startCluster({ dataDir, config: `workers: 1\nlocalDomains: [example.test]\nlisteners:\n  - { name: in, listen: "127.0.0.1:{PORT:in}" }\n` }) };
  }
  return shared.server;
}

test('a supervisor that does not answer (stopped, hung): not "not running", its own exit status, within a bounded wait', { timeout: 120_000 }, async () => {
  const hung = await sharedServer();
  const config = join(hung.dir, 'postern.yaml');
  const before = await statusHere(config);
  assert.equal(before.code, 0, before.stderr);
  process.kill(hung.proc.pid!, 'SIGSTOP');
  let stopped;
  try {
    // A stopped server answers after no wait: the command's 10 s are cut to 2 (the exit status and text are the same).
    stopped = status(config, { POSTERN_STATUS_ANSWER_MS: '2000' });
  } finally {
    process.kill(hung.proc.pid!, 'SIGCONT');
  }
  assert.equal(stopped.code, 4, stopped.stderr);
  assert.match(stopped.stderr, /does not answer/);
  assert.doesNotMatch(stopped.stderr, /not running/);
  assert.equal(stopped.json, null);
});

test('a data directory whose socket path is too long for a unix socket address: postern status still asks the running server', { timeout: 120_000 }, async () => {
  const long = await sharedServer();
  assert.ok(Buffer.byteLength(join(long.dataDir, 'postern.sock')) > 108);
  const running = status(join(long.dir, 'postern.yaml'));
  assert.equal(running.code, 0, running.stderr);
  assert.equal((running.json!.cluster as { pid: number }).pid, long.proc.pid);
  assert.ok(!long.logs.some((l) => /too long for a unix socket/.test(String(l.msg))), 'no warning: it works');
});

test('a worker down (dead, being replaced): exit 5 with what is not ready, until it is back', { timeout: 120_000 }, async () => {
  const degraded = await sharedServer();
  try {
    const config = join(degraded.dir, 'postern.yaml');
    const before = await statusHere(config);
    assert.equal(before.code, 0, before.stderr);
    // Killed as soon as it is back, a few times: its replacement then waits (restart backoff).
    let down: ReturnType<typeof status> | null = null;
    for (let kills = 0; kills < 6 && !down; kills++) {
      process.kill(await workerPid(degraded, 0), 'SIGKILL');
      const s = status(config);
      if (s.code === 5) down = s;
    }
    assert.ok(down, 'status while the worker was down');
    assert.match(down.stderr, /not ready: worker 0/);
    assert.match(String(down.json!.summary), /^0\/1 workers ready \(not ready: worker 0\)/);
    await degraded.waitFor('the worker back', async () => (await statusHere(config)).code === 0);
  } finally {
    await degraded.stop();
  }
});

/**
 * One server for the two tests below: its spool below spool.minFreeBytes, and two fences of the same script
 * (fenceKey: fenced live and as a shadow script) in its data directory before it starts. A fence changes no exit
 * status, nor does the spool name a fence.
 */
let refusing: { server: ClusterProcess; home: string; fencedFile: string } | undefined;
after(async () => { await refusing?.server.stop(); if (refusing) await rm(refusing.home, { recursive: true, force: true }); });
async function refusingServer(): Promise<{ server: ClusterProcess; fencedFile: string }> {
  if (!refusing) {
    const home = await mkdtemp(join(tmpdir(), 'postern-status-fences-'));
    const file = join(home, 'rcptto.js');
    const text = 'export default () => {};';
    await writeFile(file, text);
    const sha256 = runningCall.hash((await prepareScript(file, text)).source);
    const dataDir = join(home, 'data');
    await mkdir(join(dataDir, 'fences'), { recursive: true });
    await writeFile(join(dataDir, 'fences', 'fenced.json'), JSON.stringify([
      { hook: 'rcptto', file, sha256, since: new Date().toISOString(), crashes: 1, shadow: true },
      { hook: 'rcptto', file, sha256, since: new Date().toISOString(), crashes: 3 },
    ]));
    const server = await startCluster({ dataDir, config: `workers: 1\nlocalDomains: [example.test]\nspool: { minFreeBytes: ${Number.MAX_SAFE_INTEGER} }\nlisteners:\n  - { name: in, listen: "127.0.0.1:{PORT:in}" }\n` });
    refusing = { server, home, fencedFile: file };
    await workerPid(server, 0);
  }
  return refusing;
}

test('a server that refuses new mail (its spool below spool.minFreeBytes): exit 5, and the summary and stderr say why, as /readyz does', { timeout: 120_000 }, async () => {
  const { server: full } = await refusingServer();
  const s = status(join(full.dir, 'postern.yaml'));
  assert.equal(s.code, 5, s.stderr);
  assert.match(s.stderr, /running, but not ready \(new mail is refused, \/readyz answers 503\): spool: \d+ bytes free on the spool's filesystem, below spool\.minFreeBytes/);
  assert.match(String(s.json!.summary), /^1\/1 workers ready, 0 restarts; NOT READY: spool: .*452 4\.3\.1/);
  assert.equal((s.json!.readiness as { ready: boolean }).ready, false);
});

test('fenced scripts: the summary says which fence is of a shadow script and which of a live one', { timeout: 120_000 }, async () => {
  // The same file fenced live and as a shadow script are two fences (fenceKey); the summary named both the same.
  const { server: fenced, fencedFile: file } = await refusingServer();
  try {
    const s = status(join(fenced.dir, 'postern.yaml'));
    assert.match(String(s.json!.summary), new RegExp(`; FENCED: shadow rcptto \\(${file}\\), live rcptto \\(${file}\\); `));
  } finally {
    await fenced.stop();
  }
});
