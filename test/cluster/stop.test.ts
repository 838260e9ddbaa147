/**
 * SIGTERM stops `postern serve` after it served STARTTLS sessions: a supervisor that waited for its
 * listening sockets to report every handed-over connection closed waited for ever (the plain socket under
 * a TLS session never reports), so a service manager's stop left the server running.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { greeted, spooled, startCluster, ONE_WORKER, ROUND_ROBIN, TWO_WORKERS, type ClusterProcess } from '../helpers/cluster.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { until } from '../helpers/wait.ts';

test('SIGTERM stops the supervisor and its workers after STARTTLS sessions, open and closed', async () => {
  const pki = await makeTestPki();
  const cluster = await startCluster({
    config: `${ROUND_ROBIN}${TWO_WORKERS}    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }\n`,
  });
  const pids = (await cluster.waitFor('two ready workers', async () => {
    const ready = (await cluster.cluster()).processes.filter((p) => p.ready && p.pid);
    return ready.length >= 3 ? ready : null; // two workers and the queue process
  })).map((p) => p.pid!);
  const ca = await readFile(pki.ca.cert, 'utf8');
  const tlsSession = async (): Promise<SmtpTestClient> => {
    const c = await SmtpTestClient.connect(cluster.port('in'));
    await c.hello({ starttls: { ca, servername: 'localhost' } });
    assert.equal((await c.sendMail('a@example.org', ['b@example.test'])).code, 250);
    return c;
  };
  for (let i = 0; i < 4; i++) await (await tlsSession()).quit(); // both workers served and closed some
  const open = await tlsSession(); // and one is still open

  const exited = new Promise<number | null>((r) => cluster.proc.once('exit', (code) => r(code)));
  cluster.proc.kill('SIGTERM');
  assert.equal(await exited, 0, 'the supervisor exits, cleanly');
  assert.ok(await open.waitClosed(), 'the open session was ended');
  for (const pid of pids) assert.throws(() => process.kill(pid, 0), 'no child is left running');
  await cluster.stop();
});

test('SIGTERM drains: a transaction in progress finishes and is spooled, an idle session gets 421 4.4.2, one that outlives the grace time is closed', async () => {
  // One worker: every session is on the process that drains.
  const cluster = await startCluster({ config: TWO_WORKERS.replace('workers: 2', 'workers: 1') });
  await cluster.waitFor('the worker and the queue process ready', async () => (await cluster.cluster()).processes.filter((p) => p.ready).length === 2);
  const sending = await greeted(cluster);
  const idle = await greeted(cluster);
  const stuck = await greeted(cluster);
  for (const c of [sending, stuck]) {
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.test>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    c.write('Subject: drained\r\n\r\nfirst half');
  }

  const exited = new Promise<number | null>((r) => cluster.proc.once('exit', (code) => r(code)));
  cluster.proc.kill('SIGTERM');
  const stopping = await cluster.waitFor('the worker to start draining', () => cluster.logs.find((l) => l.msg === 'stopping: sessions in progress may finish their transaction'));
  assert.equal(stopping.sessions, 3);
  sending.write('second half\r\n.');
  const queued = await sending.read();
  assert.equal(queued.code, 250, 'the transaction in progress finished');
  const id = /queued as (\S+)/.exec(queued.text)![1]!;
  assert.equal((await idle.command('NOOP')).text, '421 4.4.2 Server shutting down');
  assert.ok(await idle.waitClosed());
  // The stuck one never finishes its DATA: after the grace time it gets the 421 and is closed.
  assert.equal((await stuck.read(30_000)).text, '421 4.4.2 Server shutting down');
  assert.equal(await exited, 0, 'the supervisor exits, cleanly');
  assert.ok((await spooled(cluster)).has(id), `the message ${id} accepted during the stop is in the spool`);
  assert.ok(cluster.logs.some((l) => l.decision === 'defer' && l.reason === 'the server is stopping'), 'the forced close is logged with its reason');
  await cluster.stop();
});

/** The server test 3 stopped: test 4's predecessor (its data folder), not started again for it. */
let stopped: ClusterProcess | undefined;

/** The process's state letter in /proc (T stopped, Z exited and not yet reaped). */
const stateOf = (pid: number): string => readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0]!;

test('a stopped server leaves no temporary file of cluster.json behind (its last write, as the only worker gave up its counting lease, is waited for, not cut by the exit)', async () => {
  // The write starts at the worker's exit and the stop ends at the last child's: left to the order in which the
  // children happen to end, the exit fell between the write's open and its rename only now and then. Made certain:
  // the queue process held until the write is about to open its temporary file (the supervisor held there), and
  // ended meanwhile, so the supervisor, let go, finds its last child gone while that write is still to be made.
  // The fault takes the supervisor's first temporary file after it is armed. Under load that was once another write
  // (status.json's, before the stop told the children to stop): the queue process, never told, did not end. That is
  // seen by the worker still running when the supervisor stopped (the intended write comes after its exit): the try is
  // let go and made again with a new server, up to three times.
  const faults = diskFaults();
  let cluster: ClusterProcess | undefined;
  let exited: Promise<number | null> | undefined;
  for (let attempt = 1; ; attempt++) {
    cluster = await startCluster({ config: ONE_WORKER, env: faults.env });
    await cluster.waitFor('every process ready', async () => (await cluster!.cluster()).processes.every((p) => p.ready));
    const supervisor = cluster.proc.pid!;
    const processes = (await cluster.cluster()).processes;
    const queue = processes.find((p) => p.role === 'queue')!.pid!;
    const worker = processes.find((p) => p.role === 'worker')!.pid!;
    const proc = cluster.proc;
    exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    process.kill(queue, 'SIGSTOP');
    let intended = true;
    try {
      faults.armFor('open-stop', '.tmp'); // cluster.json is written through .cluster.json.PID.RANDOM.tmp
      cluster.proc.kill('SIGTERM');
      await until('the supervisor to stop at the open of its last write', () => stateOf(supervisor) === 'T', { timeoutMs: 60_000 });
      intended = (() => { try { return stateOf(worker) === 'Z'; } catch { return true; } })();
      if (!intended) assert.ok(attempt < 3, 'the supervisor stopped at its last write in one of three tries');
      process.kill(queue, 'SIGCONT');
      if (intended) await until('the queue process to end (its parent, stopped, cannot reap it yet)', () => stateOf(queue) === 'Z', { timeoutMs: 60_000 });
    } finally {
      // Never left stopped, whatever failed above.
      for (const pid of [queue, supervisor]) try { process.kill(pid, 'SIGCONT'); } catch { /* gone */ }
    }
    if (intended) break;
    await exited;
    await cluster.stop();
  }
  stopped = cluster;
  assert.equal(await exited, 0);
  assert.deepEqual((await readdir(cluster.dataDir)).filter((n) => n.endsWith('.tmp')), [], 'no temporary file left');
  assert.ok(JSON.parse(await readFile(join(cluster.dataDir, 'cluster.json'), 'utf8')), 'cluster.json whole');
});

test('a start removes the temporary status files a killed predecessor left (a kill -9 cuts a write; the file must not stay for ever)', async () => {
  // The predecessor: the previous test's servers, stopped (one of its own when run alone).
  const first = stopped ?? await startCluster({ config: ONE_WORKER });
  let second: ClusterProcess | null = null;
  try {
    if (first.proc.exitCode === null && first.proc.signalCode === null) {
      await first.waitFor('every process ready', async () => (await first.cluster()).processes.every((p) => p.ready));
      const exited = new Promise<number | null>((r) => first.proc.once('exit', (code) => r(code)));
      first.proc.kill('SIGTERM');
      assert.equal(await exited, 0);
    }
    const gone = spawnSync(process.execPath, ['-e', '']).pid!; // a process id that no longer runs: the killed writer's
    const left = [`.status.json.${gone}.c829654d.tmp`, `.cluster.json.${gone}.0123abcd.tmp`];
    for (const name of left) await writeFile(join(first.dataDir, name), '{"pid":');
    second = await startCluster({ config: ONE_WORKER, dataDir: first.dataDir });
    await second.waitFor('every process ready', async () => (await second!.cluster()).processes.every((p) => p.ready));
    const names = await readdir(first.dataDir);
    for (const name of left) assert.ok(!names.includes(name), `${name} removed at the start`);
  } finally {
    await second?.stop();
    await first.stop();
  }
});
