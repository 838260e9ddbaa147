// The counting lease (engine/cluster/shared-counters.ts): while one worker alone accepts, it counts per-IP
// slots itself, without a round trip to the supervisor per connection. The limit stays exact: before another
// worker takes a slot the holder's table is merged into the supervisor's counts; a holder that does not
// answer (hung) keeps every other worker from taking one until it is dead, and its connections with it.
// First the two sides wired together over an ordered message queue (each message delivered when the test
// says, as IPC would, later), then a real `postern serve` with two workers and real sockets.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { CounterHost, WorkerCounters, type Taken } from '../../engine/cluster/shared-counters.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { startCluster, workerPid, TWO_WORKERS, type ClusterProcess } from '../helpers/cluster.ts';

const KEY = 'in 192.0.2.7';
const IP = '192.0.2.7';

/** A supervisor's CounterHost and `n` workers' counters; every message waits in `queue` until delivered. */
function wired(n: number): {
  host: CounterHost; workers: WorkerCounters[]; queue: Array<{ to: string; deliver(): void }>;
  pump(skip?: (to: string) => boolean): void; freed: () => number;
} {
  const queue: Array<{ to: string; deliver(): void }> = [];
  let freed = 0;
  const workers: WorkerCounters[] = [];
  const toWorker = (i: number, m: object): void => {
    queue.push({ to: `worker ${i}`, deliver: () => void workers[i]!.handle(m as Parameters<WorkerCounters['handle']>[0]) });
  };
  const host = new CounterHost(60_000, { sendTo: toWorker, onLeaseFree: () => { freed++; } });
  for (let i = 0; i < n; i++) {
    workers.push(new WorkerCounters({
      send: (m) => queue.push({
        to: 'supervisor',
        deliver: () => void host.handle(i, m as Parameters<CounterHost['handle']>[1], (a) => toWorker(i, a), (a) => { for (let j = 0; j < n; j++) if (j !== i) toWorker(j, a); }),
      }),
    }, 60_000));
  }
  /** Deliver every message, in order, as they come (answers included); `skip`: left in the queue (a hung process reads nothing). */
  const pump = (skip: (to: string) => boolean = () => false): void => {
    for (let i = 0; i < queue.length;) {
      if (skip(queue[i]!.to)) { i++; continue; }
      queue.splice(i, 1)[0]!.deliver();
    }
  };
  return { host, workers, queue, pump, freed: () => freed };
}

/** A promise's value if it has settled (microtasks run first), else 'pending'. */
async function now<T>(p: Promise<T>): Promise<T | 'pending'> {
  return Promise.race([p, new Promise<'pending'>((r) => setImmediate(() => r('pending')))]);
}

test('the holder counts alone; another worker\'s slot waits for the holder\'s table, so it counts the holder\'s connections', async () => {
  const { host, workers: [w0, w1], queue, pump, freed } = wired(2);
  assert.ok(host.grant(0));
  pump();
  assert.ok(w0!.leased);
  assert.deepEqual(await w0!.take(KEY, IP), { open: 1, total: 1 });
  assert.deepEqual(await w0!.take(KEY, IP), { open: 2, total: 2 });
  assert.equal(queue.length, 0, 'no message for those slots');
  assert.equal(host.open(KEY), 0, 'the supervisor does not know them yet');
  // Worker 1 accepts a connection from the same address (it was told to accept once the lease ended; a
  // straggler it accepted before it stopped takes the same path).
  const third = w1!.take(KEY, IP);
  pump();
  assert.deepEqual(await third, { open: 3, total: 3 }, 'the holder\'s two counted first: over a limit of 2, this one reads 421');
  assert.equal(host.open(KEY), 3);
  assert.equal(w0!.leased, false, 'the holder counts by round trip from now on');
  assert.equal(host.leaseHolder, null);
  assert.equal(freed(), 1);
  // The holder's slots, merged, are given back as its others are: by its next message.
  w0!.release(KEY);
  w0!.release(KEY);
  w0!.flush();
  pump();
  assert.equal(host.open(KEY), 1);
  assert.deepEqual(await Promise.all([w0!.take(KEY, IP), now(Promise.resolve(pump()))]).then(([t]) => t), { open: 2, total: 2 });
});

test('an acquire under a limit (a PROXY client) waits for the holder\'s table too, and is refused over the limit', async () => {
  const { host, workers: [w0, w1], pump } = wired(2);
  host.grant(0);
  pump();
  assert.deepEqual(await w0!.acquire(KEY, IP, 2), { ok: true, total: 1 });
  assert.deepEqual(await w0!.acquire(KEY, IP, 2), { ok: true, total: 2 });
  assert.deepEqual(await w0!.acquire(KEY, IP, 2), { ok: false }, 'over the limit in the lease itself');
  const other = w1!.acquire(KEY, IP, 2);
  pump();
  assert.deepEqual(await other, { ok: false, total: 2 }, 'two open on the holder: refused');
  assert.equal(host.open(KEY), 2);
});

test('a request the holder sent before it read the grant counts in the lease as taken', async () => {
  const { host, workers: [w0], pump } = wired(1);
  const early = w0!.take(KEY, IP); // on its way to the supervisor when it grants
  host.grant(0);
  pump(); // the request (counted there), the grant, the answer
  assert.deepEqual(await early, { open: 1, total: 1 });
  assert.deepEqual(await w0!.acquire(KEY, IP, 1), { ok: false }, 'that slot counts: a second is over a limit of 1');
  assert.deepEqual(await w0!.take(KEY, IP), { open: 2, total: 2 });
  // One request sent before the grant and answered after it was refused (a PROXY client over its limit there).
  const { host: h2, workers: [v0, v1], pump: p2 } = wired(2);
  assert.deepEqual(await Promise.all([v1!.take(KEY, IP), now(Promise.resolve(p2()))]).then(([t]) => t), { open: 1, total: 1 });
  const refused = v0!.acquire(KEY, IP, 1);
  h2.grant(0);
  p2();
  assert.deepEqual(await refused, { ok: false });
  assert.deepEqual(await v0!.take(KEY, IP), { open: 2, total: 2 }, 'the refused request no longer counts; worker 1\'s slot does');
});

test('a holder that does not answer (hung): other workers\' slots wait until it is gone, and its connections with it', async () => {
  const { host, workers: [w0, w1], queue, pump, freed } = wired(2);
  host.grant(0);
  pump();
  await w0!.take(KEY, IP);
  await w0!.take(KEY, IP);
  const waiting = w1!.take(KEY, IP);
  pump((to) => to === 'worker 0'); // worker 0 reads nothing
  assert.equal(await now(waiting), 'pending', 'no answer while the holder\'s slots are unknown');
  assert.ok(queue.some((m) => m.to === 'worker 0'), 'the lease\'s end was asked for');
  assert.equal(host.leaseHolder, 0);
  host.workerGone(0); // killed: the kernel closed its connections
  pump((to) => to === 'worker 0');
  assert.deepEqual(await waiting, { open: 1, total: 1 } satisfies Taken);
  assert.equal(freed(), 1);
  assert.equal(host.leaseHolder, null);
});

test('the holder hears of other workers\' returns; a new process gets the auth failures recorded before it ran', async () => {
  const { host, workers: [w0, w1], pump } = wired(2);
  const first = w1!.take(KEY, IP);
  pump();
  await first;
  host.grant(0);
  pump();
  assert.deepEqual(await w0!.take(KEY, IP), { open: 2, total: 2 }, 'worker 1\'s open connection counts');
  w0!.release(KEY);
  w1!.release(KEY);
  w1!.flush();
  pump();
  assert.deepEqual(await w0!.take(KEY, IP), { open: 1, total: 1 }, 'its return relayed to the holder');

  w1!.failures.recorded(IP, Date.now());
  pump();
  const late = new WorkerCounters({ send: () => undefined }, 60_000);
  late.handle({ t: 'failures', list: host.failureTable() });
  assert.equal(late.failures.get(IP)?.length, 1);
});

/** Worker `index`'s entry in cluster.json. */
async function proc(c: ClusterProcess, index: number): Promise<{ pid: number | null; accepting?: boolean; countsAlone?: boolean }> {
  return (await c.cluster()).processes.find((p) => p.role === 'worker' && p.index === index) as { pid: number | null; accepting?: boolean; countsAlone?: boolean };
}

const LIMIT_2 = TWO_WORKERS.replace('limits: { greetingDelayMs: 0 }', 'limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }');

/** Both workers up, worker 0 holding the lease, and two connections from 127.0.0.1 open on it (into `open`); worker 0's pid. */
async function twoConnectionsOnTheHolder(c: Awaited<ReturnType<typeof startCluster>>, open: SmtpTestClient[]): Promise<number> {
  const w0 = await workerPid(c, 0);
  await workerPid(c, 1);
  await c.waitFor('worker 0 counting alone', async () => (await proc(c, 0)).countsAlone === true);
  // Two greeted: until the server has seen the connections of the test before it closed, one may be over the limit.
  await c.waitFor('two connections greeted', async () => {
    const client = await SmtpTestClient.connect(c.port('in'));
    open.push(client);
    const greeting = await client.read(60_000);
    if (greeting.code !== 220) {
      assert.match(greeting.text, /^421 4\.7\.0 Too many connections from your address/);
      open.pop()!.destroy();
    }
    return open.length === 2;
  });
  return w0;
}

/**
 * One server for the lease moved away and then the hung holder (last: its worker 0 is killed); the second begins once
 * worker 0, its limit given back, holds the lease again. A two-worker server cost some 3 s of CPU to start and stop.
 */
let shared: ClusterProcess | undefined;
const limit2Server = async (): Promise<ClusterProcess> => (shared ??= await startCluster({ config: LIMIT_2 }));
after(() => shared?.stop());

test('serve: the lease moves to the second worker while the first holds the address\'s connections: the next one from it gets 421', { timeout: 180_000 }, async () => {
  const c = await limit2Server();
  const open: SmtpTestClient[] = [];
  let w0 = 0;
  let restore: (() => void) | null = null;
  try {
    w0 = await twoConnectionsOnTheHolder(c, open);
    assert.equal((await proc(c, 0)).countsAlone, true, 'both counted by worker 0 alone');
    // Worker 0 near its open-file limit stops accepting (accepting.ts): worker 1 is to accept, once worker 0's
    // table is counted in the supervisor. Worker 0 keeps its two sessions.
    const hard = /Max open files\s+\S+\s+(\d+|unlimited)/.exec(readFileSync(`/proc/${w0}/limits`, 'utf8'))![1]!;
    const soft = /Max open files\s+(\d+|unlimited)/.exec(readFileSync(`/proc/${w0}/limits`, 'utf8'))![1]!;
    execFileSync('prlimit', ['--pid', String(w0), `--nofile=${readdirSync(`/proc/${w0}/fd`).length + 3}:${hard}`]);
    restore = () => { try { execFileSync('prlimit', ['--pid', String(w0), `--nofile=${soft}:${hard}`], { stdio: 'ignore' }); } catch { /* gone */ } };
    await c.waitFor('worker 1 accepting', async () => (await proc(c, 1)).accepting === true);
    const third = await SmtpTestClient.connect(c.port('in'));
    open.push(third);
    assert.match((await third.read(60_000)).text, /^421 4\.7\.0 Too many connections from your address/, 'worker 0\'s two connections counted');
    assert.ok(open.slice(0, 2).every((s) => !s.closed), 'worker 0\'s sessions go on');
    // One of worker 0's sessions ends: its slot is free for the server again (whoever counts now).
    await open.shift()!.quit();
    await c.waitFor('a slot again', async () => {
      const client = await SmtpTestClient.connect(c.port('in'));
      open.push(client);
      return (await client.read(60_000)).code === 220;
    });
    assert.equal(await workerPid(c, 0), w0, 'nothing was replaced');
  } catch (err) {
    await c.stop(); // not left half-way for the next test
    shared = undefined;
    throw err;
  } finally {
    restore?.();
    for (const o of open) o.destroy();
  }
});

test('serve: a hung holder — no other worker accepts until it is killed, so its connections never count twice nor vanish', { timeout: 180_000 }, async () => {
  const c = await limit2Server();
  const open: SmtpTestClient[] = [];
  let w0 = 0;
  try {
    w0 = await twoConnectionsOnTheHolder(c, open);
    // Hung (its watchdog stopped too): nobody can learn its slots. A connection from the same address waits.
    process.kill(w0, 'SIGSTOP');
    const extra = await SmtpTestClient.connect(c.port('in'));
    open.push(extra);
    const reply = await extra.read(60_000);
    // Served only once worker 0 is dead (its two connections closed by the kernel), by worker 1 or by
    // worker 0's replacement: a second worker accepting beside the silent holder would have greeted it
    // while those two were still open.
    let alive = true;
    try { process.kill(w0, 0); } catch { alive = false; }
    assert.equal(alive, false, `worker 0 (${w0}) was dead when the extra connection was answered (${reply.text})`);
    assert.equal(reply.code, 220, 'its connections went with it: the address is under its limit');
    assert.ok(c.logs.some((l) => /worker stopped answering: killing it/.test(String(l.msg)) && l.worker === 0), 'killed by the supervisor');
    await c.waitFor('worker 0\'s connections closed for their clients', () => open.slice(0, 2).every((s) => s.closed));
  } finally {
    try { process.kill(w0, 'SIGCONT'); } catch { /* gone */ }
    for (const o of open) o.destroy();
    await c.stop();
    shared = undefined;
  }
});

test('serve: auth failures and the connection rate hold while the lease moves from worker 0 to worker 1', { timeout: 180_000 }, async () => {
  const c = await startCluster({
    config: `
workers: 2
localDomains: [example.test]
users: ./users
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 2, authFailuresBeforeDelay: 10, connectionRatePerIp: { count: 3, windowSeconds: 3600 } }
`,
    files: { users: `alice:${await hashPassword('right')}\n` },
  });
  const open: SmtpTestClient[] = [];
  let restore: (() => void) | null = null;
  const connect = async (localAddress: string): Promise<SmtpTestClient> => {
    const client = await SmtpTestClient.connect(c.port('in'), { localAddress });
    open.push(client);
    return client;
  };
  try {
    const w0 = await workerPid(c, 0);
    await workerPid(c, 1);
    await c.waitFor('worker 0 counting alone', async () => (await proc(c, 0)).countsAlone === true);
    // On worker 0: two failed authentications from 127.0.0.1, two connections from 127.0.0.2.
    for (let i = 0; i < 2; i++) {
      const client = await connect('127.0.0.1');
      assert.equal((await client.read(60_000)).code, 220);
      await client.command('EHLO client.test', 60_000);
      assert.equal((await client.command(`AUTH PLAIN ${Buffer.from('\0alice\0wrong').toString('base64')}`, 60_000)).code, 535);
      await client.quit();
      const other = await connect('127.0.0.2');
      assert.equal((await other.read(60_000)).code, 220);
      await other.quit();
    }
    // Worker 0 stops accepting (near its open-file limit); worker 1 accepts, then holds the lease itself and
    // decides alone: on the failures relayed to it and on the supervisor's connection-rate store.
    const limits = readFileSync(`/proc/${w0}/limits`, 'utf8');
    const [, soft, hard] = /Max open files\s+(\S+)\s+(\S+)/.exec(limits)!;
    execFileSync('prlimit', ['--pid', String(w0), `--nofile=${readdirSync(`/proc/${w0}/fd`).length + 3}:${hard}`]);
    restore = () => { try { execFileSync('prlimit', ['--pid', String(w0), `--nofile=${soft}:${hard}`], { stdio: 'ignore' }); } catch { /* gone */ } };
    await c.waitFor('worker 1 counting alone', async () => (await proc(c, 1)).countsAlone === true);
    const refused = await connect('127.0.0.1');
    assert.match((await refused.read(60_000)).text, /^421 4\.7\.0 Too many authentication failures/, 'worker 0\'s failures count on worker 1');
    const third = await connect('127.0.0.2');
    assert.equal((await third.read(60_000)).code, 220, 'the third connection within the window');
    const fourth = await connect('127.0.0.2');
    assert.match((await fourth.read(60_000)).text, /^421 4\.7\.0 Error: too many connections from 127\.0\.0\.2/, 'the fourth, two of them on worker 0');
  } finally {
    restore?.();
    for (const o of open) o.destroy();
    await c.stop();
  }
});
