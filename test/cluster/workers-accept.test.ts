// `workerChoice: fill`: the supervisor holds each listener's socket and the workers accept on it themselves
// (engine/cluster/held-socket.ts, accepting.ts). The port queues connections while no worker can take them;
// the second worker accepts only while the first is busy. (Per-IP limits over workers that each accepted
// their own connections: counting-lease.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import { startCluster, workerPid, freePort, TWO_WORKERS, ONE_WORKER } from '../helpers/cluster.ts';
import { workerSpoolDir } from '../../engine/cluster/spool-set.ts';
import { LOCK_FILE } from '../../engine/spool/data-dir-lock.ts';

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
  const starting = startCluster({ config: ONE_WORKER.replace('{PORT:in}', String(port)), dataDir });
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
    holder.kill('SIGKILL');
    const c = await starting;
    try {
      assert.equal((await client.read(120_000)).code, 220, 'greeted once the worker is ready');
      assert.ok(c.logs.some((l) => String(l.msg).startsWith(`waiting for process ${holder.pid}`)), 'the worker waited for the holder');
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

test('a connection made while the only worker is dead waits in the port\'s queue and is served by its replacement', { timeout: 180_000 }, async () => {
  const c = await startCluster({ config: ONE_WORKER });
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
  }
});

test('fill at light load: the second worker is never told to accept, and the first serves every session', { timeout: 180_000 }, async () => {
  const c = await startCluster({ config: TWO_WORKERS });
  try {
    const first = await workerPid(c, 0);
    await workerPid(c, 1);
    const worker1 = async (): Promise<{ accepting?: boolean; acceptTurns?: number }> =>
      (await c.cluster()).processes.find((p) => p.role === 'worker' && p.index === 1) as { accepting?: boolean; acceptTurns?: number };
    // Right after the start worker 0 may be busy (compiling, loading) and have company: wait until it has none.
    await c.waitFor('worker 1 not accepting', async () => (await worker1()).accepting === false);
    const turns = (await worker1()).acceptTurns;
    const served = (): Array<unknown> => c.logs.filter((l) => String(l.msg).includes('(message spooled)')).map((l) => l.pid);
    const from = served().length;
    // Ten sessions one after another, a message each: far from busy.
    for (let i = 0; i < 10; i++) {
      const client = await SmtpTestClient.connect(c.port('in'));
      assert.equal((await client.read(30_000)).code, 220);
      assert.equal((await client.command('EHLO client.test', 30_000)).code, 250);
      assert.equal((await client.sendMail('a@example.test', ['b@example.test'])).code, 250);
      await client.quit();
    }
    const round = await c.waitFor('the ten messages logged', () => served().length >= from + 10 && served().slice(from, from + 10));
    assert.deepEqual(round, Array(10).fill(first), 'every session on worker 0');
    assert.equal((await worker1()).acceptTurns, turns, 'worker 1 was not told to accept meanwhile');
  } finally {
    await c.stop();
  }
});

test('a TLS-on-connect listener under serve: the worker that accepted takes the slot before the handshake; over the limit, 421 after it', { timeout: 180_000 }, async () => {
  const pki = await makeTestPki();
  const c = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1 }
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key} }
`,
  });
  const open: SmtpTestClient[] = [];
  try {
    const ca = await readFile(pki.ca.cert, 'utf8');
    const first = await SmtpTestClient.connect(c.port('in'), { implicitTls: { ca, servername: 'localhost' } });
    open.push(first);
    assert.equal((await first.read(30_000)).code, 220);
    const second = await SmtpTestClient.connect(c.port('in'), { implicitTls: { ca, servername: 'localhost' } });
    open.push(second);
    assert.match((await second.read(30_000)).text, /^421 4\.7\.0 Too many connections from your address/);
    await first.quit();
    // Until the server has seen both close, a new connection is over the limit: 421 after the handshake, or
    // (over twice the limit) closed before it.
    await c.waitFor('a slot again', async () => {
      const client = await SmtpTestClient.connect(c.port('in'), { implicitTls: { ca, servername: 'localhost' } }).catch(() => null);
      if (!client) return false;
      open.push(client);
      return (await client.read(30_000).catch(() => null))?.code === 220;
    });
  } finally {
    for (const o of open) o.destroy();
    await c.stop();
  }
});
