// `workerChoice: fill`: the supervisor holds each listener's socket and the workers accept on it themselves
// (engine/cluster/held-socket.ts, accepting.ts). The port queues connections while no worker can take them;
// the second worker accepts only while the first is busy. (Per-IP limits over workers that each accepted
// their own connections: counting-lease.test.ts.)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import { startCluster, workerPid, freePort, greeted, TWO_WORKERS, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';
import { workerSpoolDir } from '../../engine/cluster/spool-set.ts';
import { LOCK_FILE } from '../../engine/spool/data-dir-lock.ts';
import { STALE_FOR_CONNECTIONS_MS } from '../../engine/cluster/process-model.ts';
import { watchSilence } from '../helpers/write-silence.ts';

/** A greeting on a new connection within `ms`, or null (no worker took it meanwhile: the test goes on). */
async function greetingOf(client: SmtpTestClient, ms: number): Promise<string | null> {
  try {
    return (await client.read(ms)).text;
  } catch {
    return null;
  }
}

/** A `sleep` process written into `dir`'s lock as its holder (a process of an earlier server, to a worker starting there). */
function holdLock(dir: string): ReturnType<typeof spawn> {
  const holder = spawn('sleep', ['600'], { stdio: 'ignore' });
  const stat = readFileSync(`/proc/${holder.pid}/stat`, 'latin1');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, LOCK_FILE), `${holder.pid} ${stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]}\n`);
  return holder;
}

test('a connection made before the first worker is ready waits in the port\'s queue and is served', { timeout: 180_000 }, async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'postern-accept-'));
  // Worker 0 waits for this holder of its spool before it can start.
  const holder = holdLock(workerSpoolDir(dataDir, 0));
  const port = await freePort();
  let waiting!: () => void;
  const waited = new Promise<void>((resolve) => { waiting = resolve; });
  const starting = startCluster({
    config: ONE_WORKER.replace('{PORT:in}', String(port)), dataDir,
    onLog: (l) => { if (String(l.msg).startsWith(`waiting for process ${holder.pid}`)) waiting(); },
  });
  let client: SmtpTestClient | null = null;
  try {
    // Refused until a worker process has booted and made the supervisor's socket listen; then queued.
    client = await (async () => {
      for (;;) {
        const connected = await new Promise<boolean>((resolve) => {
          const probe = net.connect(port, '127.0.0.1');
          probe.once('connect', () => { probe.destroy(); resolve(true); });
          probe.once('error', () => resolve(false));
        });
        if (connected) return SmtpTestClient.connect(port);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    assert.equal(await greetingOf(client, 500), null, 'nobody greets before a worker is ready');
    // The socket listens once a worker process has booted, which on a loaded machine may be before it reached the
    // lock: the holder goes once the worker waits for it (else it never waited, and nothing here was tried).
    await Promise.race([waited, starting.then(() => { throw new Error('the server was ready without waiting for the holder'); })]);
    assert.equal(await greetingOf(client, 100), null, 'nobody greets while the worker waits');
    holder.kill('SIGKILL');
    const c = await starting;
    try {
      assert.equal((await client.read(120_000)).code, 220, 'greeted once the worker is ready');
    } finally {
      client.destroy(); // left open, its session held the server's stop for the worker's 5 s drain
      await c.stop();
    }
  } finally {
    holder.kill('SIGKILL');
    client?.destroy();
    await starting.then((c) => c.stop(), () => undefined);
    rmSync(dataDir, { recursive: true, force: true });
  }
});

/**
 * One one-worker server for the TLS listener's slots and then the dead worker (last: it kills the worker), each on a
 * listener of its own (a server each cost some 2 s of CPU to start and stop).
 */
let shared: Promise<{ c: ClusterProcess; pki: TestPki }> | undefined;
function oneWorkerServer(): Promise<{ c: ClusterProcess; pki: TestPki }> {
  return shared ??= (async () => {
    const pki = await makeTestPki();
    const c = await startCluster({
      config: `${ONE_WORKER}  - name: tls
    listen: 127.0.0.1:{PORT:tls}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1 }
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key} }
`,
    });
    return { c, pki };
  })();
}
after(async () => { await (await shared)?.c.stop(); });

/**
 * One two-worker server for fill at light load and then a first worker that stops beating (last: it stops the worker;
 * moved here from worker-choice.test.ts, whose own server cost some 3 s of CPU to start and stop).
 */
let twoWorkers: ClusterProcess | undefined;
const twoWorkerServer = async (): Promise<ClusterProcess> => (twoWorkers ??= await startCluster({ config: TWO_WORKERS }));
after(() => twoWorkers?.stop());

test('fill at light load: the second worker is never told to accept, and the first serves every session', { timeout: 180_000 }, async () => {
  const c = await twoWorkerServer();
  try {
    const first = await workerPid(c, 0);
    await workerPid(c, 1);
    const worker1 = async (): Promise<{ accepting?: boolean; acceptTurns?: number }> =>
      (await c.cluster()).processes.find((p) => p.role === 'worker' && p.index === 1) as { accepting?: boolean; acceptTurns?: number };
    const served = (): Array<unknown> => c.logs.filter((l) => String(l.msg).includes('(message spooled)')).map((l) => l.pid);
    // A round again (at most three) only when worker 0 went silent past the staleness limit meanwhile, or the watch
    // could not tell: a loaded machine that descheduled it made it stale, and worker 1 was rightly told to accept.
    for (let attempt = 1; ; attempt++) {
      // Right after the start worker 0 may be busy (compiling, loading) and have company: wait until it has none.
      await c.waitFor('worker 1 not accepting', async () => (await worker1()).accepting === false);
      const turns = (await worker1()).acceptTurns;
      const from = served().length;
      const watch = watchSilence(first, STALE_FOR_CONNECTIONS_MS - 50);
      // Ten sessions one after another, a message each: far from busy.
      for (let i = 0; i < 10; i++) {
        const client = await SmtpTestClient.connect(c.port('in'));
        assert.equal((await client.read(30_000)).code, 220);
        assert.equal((await client.command('EHLO client.test', 30_000)).code, 250);
        assert.equal((await client.sendMail('a@example.test', ['b@example.test'])).code, 250);
        await client.quit();
      }
      const round = await c.waitFor('the ten messages logged', () => served().length >= from + 10 && served().slice(from, from + 10));
      const { silent, blind } = watch.stop();
      const turnsNow = (await worker1()).acceptTurns;
      if ((silent || blind) && (turnsNow !== turns || round.some((pid) => pid !== first))) {
        assert.ok(attempt < 3, `a round without worker 0 silent past the staleness limit (or the watch held back) in one of three: ${JSON.stringify({ silent, blind })}`);
        continue;
      }
      assert.deepEqual(round, Array(10).fill(first), 'every session on worker 0');
      assert.equal(turnsNow, turns, 'worker 1 was not told to accept meanwhile');
      break;
    }
  } catch (err) {
    await c.stop(); // not left half-way for the next test
    twoWorkers = undefined;
    throw err;
  }
});

test('serve, workerChoice fill: an idle server keeps its connections on the first worker; one that stops beating is passed over', async () => {
  const c = await twoWorkerServer();
  let first = 0;
  try {
    first = await workerPid(c, 0);
    const second = await workerPid(c, 1);
    // Six sessions open at once, each with a message: far from busy, so all on worker 0. Right after its start
    // worker 0 may still be busy (compiling, loading): rounds until one finds it idle (round robin never would).
    const served = (): Array<unknown> => c.logs.filter((l) => String(l.msg).includes('(message spooled)')).map((l) => l.pid);
    await c.waitFor('six sessions of one round all on worker 0', async () => {
      const from = served().length;
      const clients = await Promise.all(Array.from({ length: 6 }, () => greeted(c)));
      for (const client of clients) assert.equal((await client.sendMail('a@example.test', ['b@example.test'])).code, 250);
      await Promise.all(clients.map((client) => client.quit()));
      const round = await c.waitFor('the round\'s six messages logged', () => served().length >= from + 6 && served().slice(from, from + 6));
      return round.every((pid) => pid === first);
    });
    // Worker 0 stops (a hang the watchdog cannot see: the whole process is stopped). Its heartbeat is stale
    // after 300 ms, but it counts its connections' slots alone (the counting lease, shared-counters.ts), which
    // nobody can learn from a stopped process: new connections go to worker 1 once the supervisor has killed
    // it as hung (3 s), its connections closed with it. Until then they wait in the port's queue.
    const before = served().length;
    process.kill(first, 'SIGSTOP');
    const greeting = await c.waitFor('a session greeted by worker 1', async () => {
      const client = await SmtpTestClient.connect(c.port('in'));
      try {
        const r = await client.read(5_000).catch(() => null);
        if (r?.code !== 220) return null;
        assert.equal((await client.command('EHLO client.test', 30_000)).code, 250);
        return (await client.sendMail('a@example.test', ['b@example.test'])).code;
      } finally {
        client.destroy();
      }
    });
    assert.equal(greeting, 250);
    // Worker 1 (or, on a slow machine, worker 0's replacement once the supervisor killed the silent one).
    const after = await c.waitFor('the log line of that message', () => served()[before]);
    assert.notEqual(after, first, `the message after the stop was served by ${String(after)}, not the stopped worker 0 (worker 1: ${second})`);
  } finally {
    try { process.kill(first, 'SIGCONT'); } catch { /* replaced already */ }
    await c.stop();
    twoWorkers = undefined;
  }
});

test('a TLS-on-connect listener under serve: the worker that accepted takes the slot before the handshake; over the limit, 421 after it', { timeout: 180_000 }, async () => {
  const { c, pki } = await oneWorkerServer();
  const open: SmtpTestClient[] = [];
  try {
    const ca = await readFile(pki.ca.cert, 'utf8');
    const first = await SmtpTestClient.connect(c.port('tls'), { implicitTls: { ca, servername: 'localhost' } });
    open.push(first);
    assert.equal((await first.read(30_000)).code, 220);
    const second = await SmtpTestClient.connect(c.port('tls'), { implicitTls: { ca, servername: 'localhost' } });
    open.push(second);
    assert.match((await second.read(30_000)).text, /^421 4\.7\.0 Too many connections from your address/);
    await first.quit();
    // Until the server has seen both close, a new connection is over the limit: 421 after the handshake, or
    // (over twice the limit) closed before it.
    await c.waitFor('a slot again', async () => {
      const client = await SmtpTestClient.connect(c.port('tls'), { implicitTls: { ca, servername: 'localhost' } }).catch(() => null);
      if (!client) return false;
      open.push(client);
      return (await client.read(30_000).catch(() => null))?.code === 220;
    });
  } finally {
    for (const o of open) o.destroy();
  }
});

test('a connection made while the only worker is dead waits in the port\'s queue and is served by its replacement', { timeout: 180_000 }, async () => {
  const { c } = await oneWorkerServer();
  let holder: ReturnType<typeof spawn> | null = null;
  let client: SmtpTestClient | null = null;
  try {
    const worker = await workerPid(c, 0);
    // Stands for a process of an earlier server still holding worker 0's spool: the replacement waits for it
    // to end, so the connection below is certainly made while no worker runs.
    holder = holdLock(workerSpoolDir(c.dataDir, 0));
    process.kill(worker, 'SIGKILL');
    await c.waitFor('the replacement waiting for the spool', () => c.logs.some((l) => String(l.msg).startsWith(`waiting for process ${holder!.pid}`)));
    assert.ok(!(await c.cluster()).processes.some((p) => p.role === 'worker' && p.ready), 'no worker is ready');
    // The port answers: the connection is made (the kernel queues it on the supervisor's socket).
    client = await SmtpTestClient.connect(c.port('in'));
    assert.equal(await greetingOf(client, 500), null, 'nobody greets while no worker runs');
    holder.kill('SIGKILL');
    const r = await client.read(120_000);
    assert.equal(r.code, 220, 'greeted by the replacement');
    assert.equal((await client.command('EHLO client.test', 30_000)).code, 250);
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'])).code, 250);
    assert.notEqual(await workerPid(c, 0), worker);
    await client.quit();
  } finally {
    holder?.kill('SIGKILL');
    client?.destroy();
    await c.stop();
    shared = undefined;
  }
});

