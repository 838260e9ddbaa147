/**
 * The journal of a running server on a disk that fails: faults injected into the server's processes at the
 * C library (test/helpers/disk-faults.c, preloaded), the clients, the queue process and the next hop real.
 * A flush whose write or fdatasync fails refuses its records (451); their bytes stayed readable in the
 * segment (the page cache keeps them after a failed write-back), and the queue process, reading the
 * worker's journal, delivered each such message anyway, besides the copy its client sends again. A
 * refused record is now listed as done before the 451. The same for a large message (a file of its own)
 * whose queue folder fails to sync after the move: refused, and its file removed. A journal record the
 * queue process cannot read (EIO) is tried again, and delivered.
 * A test that restarts its server hands the restarted one to the next test (faults preloaded, none armed), rather than
 * that test start one more: a cluster's start and stop is most of a test's CPU.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSink, type Sink } from '../helpers/sink.ts';
import { greeted, spooled, startCluster, ONE_WORKER, type ClusterProcess, deliveryToSink } from '../helpers/cluster.ts';
import { diskFaults, type DiskFault } from '../helpers/disk-faults.ts';

/** One build of the library and one folder of armed faults for the whole file: each test takes the faults it arms. */
const faults = diskFaults();

const subjectOf = (data: Buffer): string | undefined => /Subject: (\S+)/.exec(data.toString())?.[1];

/**
 * A server delivering to a sink. `scanIntervalMs`: refused messages were found by the queue's scans (no worker
 * announces them); a long interval keeps scans out of the moments a fault is under way (a scan between the
 * write of a record and its failed sync could deliver it: the window SMTP's acknowledgement cannot close),
 * and the restart then looks at what is left.
 */
async function start(env: Record<string, string>, opts: { scanIntervalMs?: number; dataDir?: string; sink?: Sink } = {}): Promise<{ c: ClusterProcess; sink: Sink }> {
  const sink = opts.sink ?? await startSink({});
  const c = await startCluster({
    env,
    dataDir: opts.dataDir,
    config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [1], scanIntervalMs: opts.scanIntervalMs })}`,
  });
  return { c, sink };
}

/**
 * Stop `c` and start the server again on its data folder: whatever the journal or queue/ still holds is delivered now
 * (the queue's first scan schedules all of it, whatever `scanIntervalMs`: the one the next test asks for).
 */
async function restart(c: ClusterProcess, sink: Sink, scanIntervalMs?: number): Promise<ClusterProcess> {
  await c.stop();
  const again = (await start(faults.env, { dataDir: c.dataDir, sink, scanIntervalMs })).c;
  await again.waitFor('the queue runner started', () => again.logs.some((l) => l.msg === 'queue runner started'));
  await again.waitFor('nothing left in the spools', async () => (await spooled(again)).size === 0, 90_000);
  return again;
}

const keptDataDir = (): string => join(mkdtempSync(join(tmpdir(), 'postern-disk-faults-data-')), 'data');

/** A server of the tests below, its next hop and its data folder (kept across restarts). */
interface Running { c: ClusterProcess; sink: Sink; dataDir: string; scanIntervalMs: number | undefined }

/** The server the last test restarted and left running, if it scans as the next asks. */
let handed: Running | null = null;

/** The server handed on, if it scans every `scanIntervalMs`; else a new one (on a data folder of its own). */
async function serverFor(scanIntervalMs: number | undefined): Promise<Running> {
  const h = handed;
  handed = null;
  if (h && h.scanIntervalMs === scanIntervalMs) return h;
  if (h) await finish(h);
  const dataDir = keptDataDir();
  return { ...await start(faults.env, { scanIntervalMs, dataDir }), dataDir, scanIntervalMs };
}

async function finish(r: Running): Promise<void> {
  await r.c.stop();
  await r.sink.close();
  rmSync(join(r.dataDir, '..'), { recursive: true, force: true });
}
after(async () => { if (handed) await finish(handed); });

/** Quiet for a long while: see start(). */
const FAULT_SCANS = 600_000;

for (const fault of ['fdatasync-eio', 'pwritev-eio'] as const satisfies readonly DiskFault[]) {
  test(`${fault} on the journal: the messages of the failed flush get 451 and are not delivered; every 250 is delivered once; the server goes on`, { timeout: 180_000 }, async () => {
    const r = await serverFor(FAULT_SCANS);
    const { c, sink } = r;
    const first = sink.messages.length;
    let passed = false;
    try {
      const clients = await Promise.all(Array.from({ length: 6 }, () => greeted(c)));
      assert.equal((await clients[0]!.sendMail('a@example.test', ['b@example.test'], 'Subject: warm\r\n\r\nx\r\n')).code, 250);
      const acked = ['warm'];
      const refused: string[] = [];
      // The fault may land on the background sync of the zeros written ahead (then nothing is refused: the
      // records are written again elsewhere): rounds until one refuses a message.
      for (let round = 0; refused.length === 0; round++) {
        assert.ok(round < 20, 'a fault refused a message within 20 rounds');
        faults.arm(fault);
        const replies = await Promise.all(clients.map((cl, i) => cl.sendMail('a@example.test', ['b@example.test'], `Subject: r${round}m${i}\r\n\r\nx\r\n`)));
        replies.forEach((r, i) => {
          assert.ok(r.code === 250 || r.code === 451, `${r.code} ${r.text}`);
          (r.code === 250 ? acked : refused).push(`r${round}m${i}`);
        });
        await c.waitFor(`the ${fault} taken`, () => faults.taken(fault));
      }
      // The server goes on: the next messages are accepted.
      for (const [i, cl] of clients.entries()) {
        assert.equal((await cl.sendMail('a@example.test', ['b@example.test'], `Subject: after${i}\r\n\r\nx\r\n`)).code, 250);
        acked.push(`after${i}`);
      }
      await sink.waitFor(first + acked.length, 90_000);
      for (const cl of clients) await cl.quit();
      // For the next test: another fault of this loop, or the large message's (which scans as seldom).
      r.c = await restart(c, sink, FAULT_SCANS);
      const delivered = sink.messages.slice(first).map((m) => subjectOf(m.data));
      assert.deepEqual([...delivered].sort(), [...acked].sort(), 'every acknowledged message once, no refused one');
      passed = true;
      handed = r;
    } finally {
      if (!passed) await finish(r);
    }
  });
}

test('a large message whose move into queue/ may not be durable (the folder\'s fsync fails) gets 451 and is not delivered besides the client\'s new copy', { timeout: 180_000 }, async () => {
  const r = await serverFor(FAULT_SCANS);
  const { c, sink } = r;
  const first = sink.messages.length;
  let passed = false;
  try {
    const client = await greeted(c);
    const large = `${('x'.repeat(998) + '\r\n').repeat(1200)}x\r\n`;
    faults.arm('fsync-queue-eio');
    const refused = await client.sendMail('a@example.test', ['b@example.test'], `Subject: refused\r\n\r\n${large}`);
    assert.equal(refused.code, 451, refused.text);
    assert.equal(faults.taken('fsync-queue-eio'), true);
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'], `Subject: again\r\n\r\n${large}`)).code, 250);
    await sink.waitFor(first + 1, 60_000);
    await client.quit();
    // For the next test (the unreadable record's), which scans every 200 ms.
    r.c = await restart(c, sink, undefined);
    r.scanIntervalMs = undefined;
    assert.deepEqual(sink.messages.slice(first).map((m) => subjectOf(m.data)), ['again']);
    passed = true;
    handed = r;
  } finally {
    if (!passed) await finish(r);
  }
});

test('a journal record the queue process cannot read (EIO) is tried again and delivered', { timeout: 180_000 }, async () => {
  const r = await serverFor(undefined);
  const { c, sink } = r;
  const first = sink.messages.length;
  const firstLog = c.logs.length;
  try {
    const client = await greeted(c);
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'], 'Subject: warm\r\n\r\nx\r\n')).code, 250);
    await sink.waitFor(first + 1, 60_000);
    faults.arm('pread-eio');
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'], 'Subject: unread\r\n\r\nx\r\n')).code, 250);
    await c.waitFor('the read fault taken', () => faults.taken('pread-eio'));
    await sink.waitFor(first + 2, 90_000);
    assert.deepEqual(sink.messages.slice(first).map((m) => subjectOf(m.data)), ['warm', 'unread']);
    assert.equal(c.logs.slice(firstLog).some((l) => l.msg === 'unreadable spool file: not delivering it'), false);
    await client.quit();
  } finally {
    await finish(r);
  }
});

test('a journal key whose write the disk cuts short is not used: no 250 is checksummed with a key the next start cannot read', { timeout: 180_000 }, async () => {
  const dataDir = keptDataDir();
  const sink = await startSink({});
  faults.armFor('write-short', '/key.new');
  let c: ClusterProcess | null = null;
  try {
    // The process whose key write is cut short stops: the server does not start, and is started again.
    c = await start(faults.env, { dataDir, sink }).then((s) => s.c, () => null) ?? (await start({}, { dataDir, sink })).c;
    assert.ok(faults.taken('write-short'), 'a key write was cut short');
    const client = await greeted(c);
    for (let i = 0; i < 3; i++) assert.equal((await client.sendMail('a@example.test', ['b@example.test'], `Subject: m${i}\r\n\r\nx\r\n`)).code, 250);
    await client.quit();
    c = await restart(c, sink);
    await sink.waitFor(3, 60_000);
    assert.deepEqual(new Set(sink.messages.map((m) => subjectOf(m.data))), new Set(['m0', 'm1', 'm2']));
  } finally {
    await c?.stop();
    await sink.close();
    rmSync(join(dataDir, '..'), { recursive: true, force: true });
  }
});
