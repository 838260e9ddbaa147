/**
 * The spool fills its own filesystem (a 12 MB tmpfs of its own here, `spool.minFreeBytes: 0`): new mail gets a 4xx,
 * never a 250 that is lost. Then delivery: the next hop takes every message, but a message leaves a journal
 * only once it is marked done, which needs room, and a segment is deleted only once all of its messages are
 * done. Without room kept back for that, the disk stayed full for good, every new message refused and all
 * that was delivered kept to be delivered again at the next start. With the spool's reserve (released for
 * the bookkeeping, made again once there is room) the delivered mail leaves the disk and mail flows again.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { statSync, statfsSync, writeFileSync, readFileSync, openSync, writeSync, closeSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { startSink, type Sink } from '../helpers/sink.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { deliveryToSink, greeted, ONE_WORKER, startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { until } from '../helpers/wait.ts';
import { RESERVE_BYTES } from '../../engine/spool/reserve.ts';
import { runCli } from '../helpers/cli.ts';
import { needsTmpfs, testFilesystem, type SmallFilesystem } from '../helpers/tmpfs.ts';

const skip = needsTmpfs();

/** The spool's filesystem: the reserve's 4 MiB and room for about 18 messages (fill() wants more than 10). */
const FS_MB = 12;

/** ~400 KB: a journal record each (up to 1 MiB), so the journal is what fills the disk. */
const BODY = `${'x'.repeat(76)}\r\n`.repeat(5000);

/** Send ~400 KB messages until a few in a row are refused (4xx, never 5xx); the subjects of those accepted. */
async function fill(c: ClusterProcess, filesystem: string): Promise<string[]> {
  const acked: string[] = [];
  let refusedInARow = 0;
  for (let i = 0; refusedInARow < 3 && i < 200; i++) {
    const client = await greeted(c);
    const r = await client.sendMail('a@example.test', ['b@example.test'], `Subject: fill ${i}\r\n\r\n${BODY}`);
    await client.quit();
    if (r.code === 250) {
      acked.push(`fill ${i}`);
      refusedInARow = 0;
    } else {
      assert.ok(r.code >= 400 && r.code < 500, `a full disk defers, it does not refuse for good: ${r.text}`);
      refusedInARow++;
    }
  }
  assert.ok(acked.length > 10 && refusedInARow === 3, `the disk filled up (${acked.length} accepted)`);
  const free = statfsSync(filesystem);
  assert.ok(free.bavail * free.bsize < 1024 * 1024, 'less than 1 MiB left');
  return acked;
}

/**
 * Take what fill() left (under 1 MiB, more or less by chance: a start's lock file fitted in it in some runs) with a
 * file at `path`, page by page until the filesystem refuses: a process starting now cannot create a file without the
 * reserve. Removed by the caller once that start is seen.
 */
function takeTheRest(path: string): void {
  const fd = openSync(path, 'w');
  const page = Buffer.alloc(4096);
  try {
    for (;;) writeSync(fd, page);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    closeSync(fd);
  }
}

/** Until a new message gets 250 (4xx meanwhile, never 5xx). */
async function acceptedAgain(c: ClusterProcess, subject: string): Promise<void> {
  await until('a new message accepted', async () => {
    const client = await SmtpTestClient.connect(c.port('in'));
    try {
      await client.read(30_000);
      await client.command('EHLO client.test', 30_000);
      const r = await client.sendMail('a@example.test', ['b@example.test'], `Subject: ${subject}\r\n\r\nroom again\r\n`);
      if (r.code !== 250) assert.ok(r.code >= 400 && r.code < 500, r.text);
      return r.code === 250;
    } finally {
      await client.quit();
    }
  }, { timeoutMs: 60_000, intervalMs: 500 });
}

const subjectsOf = (sink: Sink): string[] => sink.messages.map((m) => /^Subject: (.*)$/m.exec(m.data.toString())?.[1] ?? '');

/** A server without delivery on a full-disk filesystem of its own, its reserve made: the next hop is down, the queue only grows. */
interface FullDiskServer { mount: SmallFilesystem; dataDir: string; c: ClusterProcess }

async function fullDiskServer(): Promise<FullDiskServer> {
  const mount = testFilesystem(FS_MB);
  const dataDir = join(mount.dir, 'data');
  const c = await startCluster({ config: `${ONE_WORKER}spool: { minFreeBytes: 0 }\n`, dataDir }).catch((err: unknown) => { mount.unmount(); throw err; });
  const reserve = join(dataDir, 'spool', 'reserve');
  await c.waitFor('the reserve', () => { try { return statSync(reserve).size === RESERVE_BYTES; } catch { return false; } });
  return { mount, dataDir, c };
}

async function finish(s: FullDiskServer): Promise<void> {
  await s.c.stop();
  s.mount.unmount();
}

/** The server the delete test leaves (taking mail again, its disk freed), which the first test goes on with: a cluster's start and stop is much of a test's CPU. */
let handed: FullDiskServer | null = null;
after(async () => { if (handed) await finish(handed); });

test('on a full disk postern queue delete --all deletes every message (the reserve gives it room), and new mail is taken again', { skip, timeout: 300_000 }, async () => {
  // No delivery: the next hop is down, the queue only grows. Deleting it is how the administrator frees the disk.
  const server = await fullDiskServer();
  const { c, dataDir } = server;
  let passed = false;
  try {
    const reserve = join(dataDir, 'spool', 'reserve');
    const acked = await fill(c, server.mount.dir);
    const config = join(c.dir, 'postern.yaml');
    const listed = await runCli(['queue', 'list', '--json', '-c', config]);
    const ids = (JSON.parse(listed.stdout) as { messages: Array<{ id: string }> }).messages.map((e) => e.id);
    assert.equal(ids.length, acked.length, 'every 250 is in the queue');

    const r = await runCli(['queue', 'delete', '--all', '-c', config]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n').map((l) => l.replace(/: deleted$/, '')).sort(), ids.sort());
    assert.match(r.stderr, /the disk is full: the spool's reserve .* was released/);
    assert.deepEqual((JSON.parse((await runCli(['queue', 'list', '--json', '-c', config])).stdout) as { messages: unknown[] }).messages, []);

    // The server frees the segments, logs who deleted what, makes its reserve again and takes mail again.
    await acceptedAgain(c, 'after delete');
    await c.waitFor('the deletions logged', () => ids.every((id) => c.logs.some((l) => l.id === id && /removed by postern queue delete/.test(String(l.msg)))));
    await c.waitFor('the reserve made again', () => statSync(reserve).size === RESERVE_BYTES);
    passed = true;
  } finally {
    if (passed) handed = server;
    else await finish(server);
  }
});

test('a spool that filled its disk: no 250 is lost, delivered mail leaves the disk, and new mail is taken again', { skip, timeout: 300_000 }, async () => {
  // The delete test's server, its disk freed and the message it took since still queued (undelivered: no next hop yet).
  const server = handed ?? await fullDiskServer();
  handed = null;
  const { c, dataDir } = server;
  const firstLog = c.logs.length;
  const sink = await startSink({});
  try {
    const reserve = join(dataDir, 'spool', 'reserve');
    const acked = await fill(c, server.mount.dir);

    // Delivery on (a reload): every message accepted reaches the next hop.
    const config = join(c.dir, 'postern.yaml');
    writeFileSync(config, `${readFileSync(config, 'utf8')}${deliveryToSink(sink.port, { retrySchedule: [1] })}`);
    c.proc.kill('SIGHUP');
    const subjects = (): string[] => subjectsOf(sink);
    await until('every accepted message delivered', () => acked.every((s) => subjects().includes(s)), { timeoutMs: 120_000 });

    // The delivered messages leave the disk: new mail is taken again (refused meanwhile, never lost).
    await acceptedAgain(c, 'after');
    await until('the new message delivered', () => subjects().includes('after'), { timeoutMs: 60_000 });
    const logs = (): Array<Record<string, unknown>> => c.logs.slice(firstLog);
    assert.ok(logs().some((l) => /the reserve is released for the queue's bookkeeping/.test(String(l.msg))), 'the reserve was used, and that is logged');
    await c.waitFor('the reserve made again', () => statSync(reserve).size === RESERVE_BYTES);
    assert.ok(logs().some((l) => /the reserve is kept again/.test(String(l.msg))));
    for (const s of acked) assert.equal(subjects().filter((x) => x === s).length, 1, `${s} delivered once`);
  } finally {
    await finish(server);
    await sink.close();
  }
});

test('on a full disk a killed queue process comes back, and the whole server starts again (the reserve lets them take their locks)', { skip, timeout: 300_000 }, async () => {
  const mount = testFilesystem(FS_MB);
  const sink = await startSink({});
  const dataDir = join(mount.dir, 'data');
  const base = `${ONE_WORKER}spool: { minFreeBytes: 0 }\n`;
  let c = await startCluster({ config: base, dataDir });
  try {
    const reserve = join(dataDir, 'spool', 'reserve');
    await c.waitFor('the reserve', () => { try { return statSync(reserve).size === RESERVE_BYTES; } catch { return false; } });
    const acked = await fill(c, mount.dir);

    // The queue process killed: replaced, on a disk without room for its lock file.
    const filler = join(mount.dir, 'filler');
    takeTheRest(filler);
    const queue = async (): Promise<{ pid: number | null; ready: boolean }> => (await c.cluster()).processes.find((p) => p.role === 'queue')!;
    const killed = (await queue()).pid!;
    process.kill(killed, 'SIGKILL');
    await c.waitFor('a new queue process, ready', async () => { const q = await queue(); return q.ready && q.pid !== killed; });
    // Its stdout and its ready message to the supervisor (which `cluster()` reports) take different ways: the line may come after.
    await c.waitFor('the reserve-released line logged', () => c.logs.some((l) => /the reserve is released so that this process could start/.test(String(l.msg))));
    unlinkSync(filler);

    // The whole server stopped and started again on the full disk, now with delivery.
    await c.stop();
    c = await startCluster({ config: `${base}${deliveryToSink(sink.port, { retrySchedule: [1] })}`, dataDir });
    await until('every accepted message delivered', () => acked.every((s) => subjectsOf(sink).includes(s)), { timeoutMs: 120_000 });
    await acceptedAgain(c, 'after restart');
    await until('the new message delivered', () => subjectsOf(sink).includes('after restart'), { timeoutMs: 60_000 });
  } finally {
    await c.stop();
    await sink.close();
    mount.unmount();
  }
});
