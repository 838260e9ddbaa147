/**
 * A stop while a delivery waits for the next hop's verdict on a message it sent whole (the reply to the final
 * dot). Dropping the connection there leaves the next hop with the message and the queue without its answer:
 * the message is retried and arrives twice (RFC 1047). The queue process used to drop every busy connection at
 * once when it stopped (SIGTERM; its supervisor killed and the service started again at once): each test's
 * next hop counts what it got.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { startPostern } from '../../engine/app/postern.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { until } from '../helpers/wait.ts';
import { startCluster, greeted, spooled, ONE_WORKER, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
/** The queue process's line as its stop begins with a delivery waiting for the next hop's verdict. */
const WAITS_FOR_VERDICT = 'stopping: deliveries whose message went out whole wait for the next hop\'s verdict';

/**
 * A next hop that holds its verdict until `release()`: each test releases it once the stop is under way (the queue
 * process says it waits), rather than giving it a fixed 5 s delay that the stop had to land in (idle time, and on a
 * slow machine a stop that came after the verdict tested nothing).
 */
async function holdingSink(): Promise<{ sink: Sink; release: () => void }> {
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  return { sink: await startSink({ holdVerdict: held }), release };
}
const waitsForVerdict = (c: ClusterProcess): boolean => c.logs.some((l) => l.msg === WAITS_FOR_VERDICT);

/** A message accepted, and sent whole to the next hop, which has not answered yet; resolves with the queue process's PID. */
async function awaitingVerdict(c: ClusterProcess, sink: Sink): Promise<number> {
  const queuePid = (await c.waitFor('the queue process', async () => (await c.cluster()).processes.find((p) => p.role === 'queue' && p.ready)?.pid))!;
  const client = await greeted(c);
  assert.equal((await client.sendMail('a@example.test', ['b@example.test'], 'Subject: once\r\n\r\nbody\r\n')).code, 250);
  await client.quit();
  await until('the message\'s end at the next hop', () => sink.endsOfData === 1, { timeoutMs: 60_000 });
  return queuePid;
}

test('SIGTERM while the next hop has the whole message and has not answered yet: the verdict is waited for, recorded, and the message is not sent again', { timeout: 120_000 }, async () => {
  const { sink, release } = await holdingSink();
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port)}` });
  try {
    await awaitingVerdict(c, sink);
    const exited = new Promise<number | null>((r) => c.proc.once('exit', (code) => r(code)));
    c.proc.kill('SIGTERM');
    await c.waitFor('the queue process to wait for the verdict', () => waitsForVerdict(c));
    release();
    assert.equal(await exited, 0);
    await sink.waitFor(1, 30_000); // the next hop takes it in any case: it has the whole message
    assert.deepEqual([...await spooled(c)], [], 'its delivery recorded: nothing left to send again');
    assert.ok(c.logs.some((l) => /status=sent/.test(String(l.msg))), 'logged as sent');
  } finally {
    release();
    await c.stop();
    await sink.close();
  }
});

test('the supervisor killed while the next hop has the whole message, and the server started again at once: the old queue process gets the verdict, the new one waits for it, the next hop gets the message once', { timeout: 180_000 }, async () => {
  const { sink, release } = await holdingSink();
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port)}` });
  let second: ReturnType<typeof spawn> | null = null;
  let out = '';
  try {
    const queuePid = await awaitingVerdict(c, sink);
    c.proc.kill('SIGKILL');
    await new Promise((r) => c.proc.once('exit', r));
    second = spawn(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'serve', '--config', join(c.dir, 'postern.yaml')], {
      cwd: c.dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1' },
    });
    second.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
    second.stderr!.on('data', (b: Buffer) => { out += b.toString(); });
    // The verdict comes once the old queue process waits for it and the new server's queue process waits for that one.
    await c.waitFor('the old queue process to wait for the verdict', () => waitsForVerdict(c));
    await until('the new queue process to wait for the old one', () => out.includes(`waiting for process ${queuePid}, of an earlier server`), { timeoutMs: 150_000 })
      .catch((err: Error) => { throw new Error(`${err.message}; the new server wrote:\n${out}`); });
    release();
    await until('the new queue runner started', () => /"msg":"queue runner started"/.test(out), { timeoutMs: 150_000 })
      .catch((err: Error) => { throw new Error(`${err.message}; the new server wrote:\n${out}`); });
    await until('the old queue process gone', () => { try { process.kill(queuePid, 0); return false; } catch { return true; } }, { timeoutMs: 60_000 });
    // (Failed once, in a CI run at heavy load: the old queue process's last lines then say whether it got the verdict,
    // was killed as hung, or stopped before it.)
    const oldQueue = (): string => c.lines.filter((l) => l.includes('"component":"queue"') || l.includes('"queue":0')).slice(-12).join('\n');
    assert.match(out, /"messages":0,"msg":"queue runner started"/, `the new queue process found the message delivered; the old queue process's last lines:\n${oldQueue()}`);
    assert.equal(sink.messages.length, 1, 'the next hop got it once');
    assert.ok(c.logs.some((l) => /status=sent/.test(String(l.msg))), 'the old queue process logged it sent');
  } finally {
    release();
    if (second && second.exitCode === null) {
      second.kill('SIGTERM');
      await new Promise((r) => second!.once('exit', r));
    }
    await c.stop();
    await sink.close();
  }
});

test('the supervisor killed while its queue process ends a delivery, and a one-process server started on the data directory at once: refused, naming that process; started once it is gone, nothing is delivered twice', { timeout: 180_000 }, async () => {
  const { sink, release } = await holdingSink();
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port)}` });
  try {
    const queuePid = await awaitingVerdict(c, sink);
    c.proc.kill('SIGKILL');
    await new Promise((r) => c.proc.once('exit', r));
    await c.waitFor('the old queue process to wait for the verdict', () => waitsForVerdict(c));
    // The same data directory and delivery, on a port of its own (the old worker may still hold the listener's).
    const configText = (await readFile(join(c.dir, 'postern.yaml'), 'utf8')).replace(/listen: 127\.0\.0\.1:\d+/, 'listen: 127.0.0.1:0');
    const spoolDir = join(c.dataDir, 'spool');
    await assert.rejects(startPostern({ configText, baseDir: c.dir, watch: false }),
      new RegExp(`${spoolDir} is in use by another Postern process \\(PID ${queuePid};`));
    release();
    await until('the old queue process gone', () => { try { process.kill(queuePid, 0); return false; } catch { return true; } }, { timeoutMs: 60_000 });
    const single = await startPostern({ configText, baseDir: c.dir, watch: false });
    try {
      assert.deepEqual(await single.spools.list(), [], 'the old queue process recorded its delivery');
      assert.equal(sink.messages.length, 1, 'the next hop got it once');
    } finally {
      await single.close();
    }
  } finally {
    release();
    await c.stop();
    await sink.close();
  }
});
