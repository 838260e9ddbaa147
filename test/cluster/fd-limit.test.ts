/**
 * A worker at its open-file limit (EMFILE). It accepts on the listening socket the supervisor holds
 * (workerChoice: fill): libuv, when accept() fails with EMFILE, accepts and closes every connection queued on
 * the socket, so a worker near its limit stops accepting by itself (engine/cluster/accepting.ts); the
 * connections wait in the port's queue and are served once descriptors are free. (With hand-over, a descriptor
 * the worker could not receive left Node's channel waiting for ever: with workerChoice roundRobin the
 * supervisor still replaces a worker that takes no handed-over connection for 10 s.)
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { greeted, spooled, startCluster, workerPid, ONE_WORKER, ROUND_ROBIN, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';
import { startSink, type Sink } from '../helpers/sink.ts';

/** The soft and hard open-file limits of a process. */
function fileLimits(pid: number): { soft: string; hard: string } {
  const m = /Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))!;
  return { soft: m[1]!, hard: m[2]! };
}

/**
 * One fill server (and its next hop) for the limit on a connection the worker has and then the limit at accept
 * (a server each cost some 2 s of CPU to start and stop): the first restores its worker's limit, and counts the
 * deliveries before the second sends.
 */
let fill: Promise<{ c: ClusterProcess; sink: Sink }> | undefined;
function fillServer(): Promise<{ c: ClusterProcess; sink: Sink }> {
  return fill ??= (async () => {
    const sink = await startSink({});
    const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [1] })}` });
    return { c, sink };
  })();
}
async function stopFillServer(): Promise<void> {
  const running = fill;
  fill = undefined;
  if (!running) return;
  const { c, sink } = await running;
  await c.stop();
  await sink.close();
}
after(stopFillServer);

test('a worker at its open-file limit on a connection it already has: 451 for what needs a new file, 250 for the rest, every 250 delivered once; all 250 once descriptors are free', { timeout: 180_000 }, async () => {
  const { c, sink } = await fillServer();
  try {
    const client = await greeted(c);
    const acked: string[] = [];
    // 1100 lines (> 1 MiB) get a file of their own in incoming/; 900 go to the journal, whose 4 MiB segments fill up.
    const send = async (subject: string, lines: number): Promise<number> => {
      const r = await client.sendMail('a@example.test', ['b@example.test'], `Subject: ${subject}\r\n\r\n${('x'.repeat(998) + '\r\n').repeat(lines)}`);
      assert.ok(r.code === 250 || r.code === 451, `${subject}: ${r.text}`);
      if (r.code === 250) acked.push(subject);
      return r.code;
    };
    assert.equal(await send('before', 1), 250);
    const worker = await workerPid(c, 0);
    const limits = fileLimits(worker);
    execFileSync('prlimit', ['--pid', String(worker), `--nofile=8:${limits.hard}`]);
    const atLimit = [];
    for (let i = 0; i < 12; i++) atLimit.push(await send(`limited${i}`, i % 3 === 0 ? 1100 : 900));
    assert.equal(atLimit[0], 451, 'a message that needs a file of its own is refused for now');
    execFileSync('prlimit', ['--pid', String(worker), `--nofile=${limits.soft}:${limits.hard}`]);
    for (let i = 0; i < 6; i++) assert.equal(await send(`after${i}`, i % 3 === 0 ? 1100 : 900), 250);
    await sink.waitFor(acked.length, 90_000);
    await c.waitFor('nothing left in the spools', async () => (await spooled(c)).size === 0, 90_000);
    const delivered = sink.messages.map((m) => /Subject: (\S+)/.exec(m.data.subarray(0, 1000).toString())?.[1]);
    assert.deepEqual(delivered.sort(), [...acked].sort(), 'every acknowledged message once, no refused one');
    assert.equal(await workerPid(c, 0), worker, 'the same worker: nothing crashed');
    await client.quit();
  } catch (err) {
    await stopFillServer(); // not left half-way for the next test
    throw err;
  }
});

test('a worker near its open-file limit stops accepting; connections made meanwhile wait in the port\'s queue and are all served once descriptors are free', { timeout: 120_000 }, async () => {
  const { c } = await fillServer();
  const sockets: SmtpTestClient[] = [];
  try {
    const worker = await workerPid(c, 0);
    const logsFrom = c.logs.length; // the test before brought its worker to the limit too
    const logged = (pattern: RegExp): boolean => c.logs.slice(logsFrom).some((l) => pattern.test(String(l.msg)));
    const limits = fileLimits(worker);
    const limit = readdirSync(`/proc/${worker}/fd`).length + 3;
    // Room for a few more descriptors only: far under what the worker keeps free.
    execFileSync('prlimit', ['--pid', String(worker), `--nofile=${limit}:${limits.hard}`]);
    await c.waitFor('the worker to stop accepting', () => logged(/worker 0 is near its open-file limit: it accepts no new connections/));
    for (let i = 0; i < 12; i++) sockets.push(await SmtpTestClient.connect(c.port('in')));
    execFileSync('prlimit', ['--pid', String(worker), `--nofile=${limits.soft}:${limits.hard}`]);
    // None dropped: each is greeted, and can send.
    for (const s of sockets) assert.equal((await s.read(60_000)).code, 220);
    assert.equal((await sockets[0]!.command('EHLO client.test', 30_000)).code, 250);
    assert.equal((await sockets[0]!.sendMail('a@example.test', ['b@example.test'])).code, 250);
    assert.equal(await workerPid(c, 0), worker, 'the same worker: nothing replaced');
    assert.ok(logged(/worker 0 has descriptors to spare again/));
  } finally {
    for (const s of sockets) s.destroy();
    await stopFillServer();
  }
});

test('workerChoice roundRobin: a worker that ran out of file descriptors while connections were handed to it is replaced; the server greets and accepts again', { timeout: 120_000 }, async () => {
  const c = await startCluster({
    config: `${ONE_WORKER}${ROUND_ROBIN}`,
  });
  const sockets: net.Socket[] = [];
  try {
    const worker = await workerPid(c, 0);
    const limits = fileLimits(worker);
    const limit = readdirSync(`/proc/${worker}/fd`).length + 3;
    // Room for a few more descriptors only: the connections after those cannot be received.
    execFileSync('prlimit', ['--pid', String(worker), `--nofile=${limit}:${limits.hard}`]);
    let greetings = 0;
    for (let i = 0; i < 12; i++) {
      const s = net.connect(c.port('in'), '127.0.0.1');
      s.on('error', () => undefined);
      s.once('data', () => { greetings++; });
      sockets.push(s);
    }
    // (It may also die there, out of descriptors for its own work: then it is replaced, which is fine too.)
    const openFiles = (): number => { try { return readdirSync(`/proc/${worker}/fd`).length; } catch { return Infinity; } };
    await c.waitFor('the worker at its limit', () => greetings >= 3 && openFiles() >= limit, 60_000);
    // Descriptors free again: the limit back, and those connections gone.
    try {
      execFileSync('prlimit', ['--pid', String(worker), `--nofile=${limits.soft}:${limits.hard}`], { stdio: 'ignore' });
    } catch (err) {
      if (existsSync(`/proc/${worker}`)) throw err;
      // it died at its limit (and was replaced)
    }
    for (const s of sockets) s.destroy();
    // Whatever the channel went through, the server greets and serves again (a wedged worker is replaced:
    // before, with one worker, no client was greeted again).
    // A connection handed to the worker being replaced is closed (a client tries again, as SMTP clients do).
    const client = await c.waitFor('a greeting again', () => greeted(c).catch(() => null), 60_000);
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'])).code, 250);
    await client.quit();
    // Which way it recovered depends on where the channel was when the limit hit: a wedged worker is replaced
    // (and logged), one that only dropped the descriptors it could not receive serves on. Either way, the
    // greeting above is the promise; without the replacement a wedged worker never greets again.
    const replaced = c.logs.some((l) => /worker 0 takes no connections handed to it: replacing it/.test(String(l.msg)));
    if (replaced) assert.notEqual(await workerPid(c, 0), worker, 'the wedged worker was replaced');
  } finally {
    for (const s of sockets) s.destroy();
    await c.stop();
  }
});
