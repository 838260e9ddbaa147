// The queue process killed (SIGKILL) at points of a message's life under `postern serve`, each by a fault armed for it
// (test/helpers/disk-faults.ts), then restarted by the supervisor. One server and one next hop for the three (a server
// each cost some 2 s of CPU to start and stop): each test starts on an empty spool with the queue process ready, arms
// its fault then (the first's before the start, as it counts the first done list synced), gives the next hop its
// answers, and counts the restarts and the next hop's messages from its own start.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { SpoolSet, workerSpoolDir } from '../../engine/cluster/spool-set.ts';
import { startSink, type Sink, type SinkOptions } from '../helpers/sink.ts';
import { startCluster, ONE_WORKER, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';
import { diskFaults, type DiskFaults } from '../helpers/disk-faults.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

interface Shared { c: ClusterProcess; sink: Sink; faults: DiskFaults }
/** What the next hop answers at each stage: the running test's. */
let decide: NonNullable<SinkOptions['decide']> = () => null;
let shared: Promise<Shared> | undefined;

/**
 * The server with `arm` done (before its start when this starts it), its queue process ready, and where this test's
 * restarts and next-hop messages count from.
 */
async function server(arm: (faults: DiskFaults) => void = () => undefined): Promise<Shared & { restarted(): Promise<unknown>; sinkFrom: number }> {
  const started = shared !== undefined;
  shared ??= (async () => {
    const sink = await startSink({ decide: (stage, address, peer) => decide(stage, address, peer) });
    const faults = diskFaults();
    arm(faults);
    const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [0.2] })}`, env: faults.env });
    return { c, sink, faults };
  })();
  const s = await shared;
  if (started) arm(s.faults);
  const queue = async (): Promise<{ restarts: number; ready: boolean } | undefined> => (await s.c.cluster()).processes.find((p) => p.role === 'queue');
  const before = (await s.c.waitFor('the queue process ready', async () => { const q = await queue(); return q?.ready && q; })).restarts;
  return {
    ...s,
    sinkFrom: s.sink.messages.length,
    restarted: () => s.c.waitFor('the queue process restarted', async () => { const q = await queue(); return q && q.restarts > before && q.ready; }),
  };
}
after(async () => {
  const s = await shared;
  await s?.c.stop();
  await s?.sink.close();
});

// Moved out of the worker's journal: the queue process moves a message deferred a second time out of the worker's
// journal (it holds a reader's view of it; the worker writes it and deletes its segments). Killed between the move's
// rename and its done mark, it leaves both copies: after its restart the message is one message, moved again,
// delivered once, and the worker's segments of the delivered mail are deleted.
test('the queue process killed mid-move out of a worker\'s journal: each message delivered once, the segments deleted', async () => {
  let deferring = true;
  decide = (stage) => (stage === 'rcpt' && deferring ? { code: 451, text: '4.2.0 Try again later' } : null);
  // The queue process's first sync of a done list: the done mark of its first move, after the move's rename.
  const { c, sink, faults, restarted } = await server((f) => f.armFor('fsync-kill', '.done'));
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) ids.push(await submitMessage(c.port('in'), 'a@example.test', [`b${i}@example.test`], `Subject: moving ${i}\r\n\r\nbody ${i}\r\n`));
  await c.waitFor('the queue process killed at its first move\'s done mark', () => faults.taken('fsync-kill'));
  await restarted();
  const worker = workerSpoolDir(c.dataDir, 0);
  const queued = new SpoolSet(new Spool(join(c.dataDir, 'spool')));
  await c.waitFor('every message moved out of the journal', () => ids.every((id) => existsSync(join(worker, 'queue', `${id}.msg`))));
  assert.deepEqual((await queued.list()).sort(), [...ids].sort(), 'each message listed once');

  deferring = false;
  await c.waitFor('every message delivered, the queue empty', async () => (await queued.list()).length === 0 && ids.every((_, i) => sink.messages.some((m) => m.to.includes(`b${i}@example.test`))));
  for (let i = 0; i < 3; i++) assert.equal(sink.messages.filter((m) => m.to.includes(`b${i}@example.test`)).length, 1, `message ${i} delivered once`);
  // The worker deletes a segment once all of its records are done; only the one it writes to stays.
  const segments = (): string[] => readdirSync(join(worker, 'journal')).filter((n) => n.endsWith('.seg'));
  await c.waitFor('the segments of the delivered mail deleted', () => segments().length <= 1);
  // Nothing left in the worker's queue folder (a removal takes the message file before its state file: waited for,
  // not read once): neither a state file nor the temporary file of a state write the kill cut short (the kill at
  // the first move's done mark may come while another message's state is being written), which the restarted
  // queue process removes as its writer is gone.
  await c.waitFor('nothing left in the worker\'s queue folder', () => readdirSync(join(worker, 'queue')).length === 0);
});

// Killed after it spooled a bounce and before it recorded the attempt that made it (the rename of the message's state
// file). After its restart the attempt runs again and fails the same recipient again: it finds the bounce it spooled
// instead of spooling another, and the sender gets one bounce, not two.
test('the queue process killed between spooling a bounce and recording the attempt: one bounce after its restart', async () => {
  let refuseLater = true;
  decide = (stage, address) => (stage !== 'rcpt' ? null
    : address.startsWith('bad@') ? { code: 550, text: '5.1.1 No such user' }
      : refuseLater && address.startsWith('later@') ? { code: 451, text: '4.2.0 Try again later' } : null);
  const { c, sink, faults, restarted, sinkFrom } = await server();
  faults.armFor('rename-kill', '.state');
  const id = await submitMessage(c.port('in'), 'a@example.test', ['bad@example.test', 'later@example.test']);
  await c.waitFor('the queue process killed at the state file\'s rename', () => faults.taken('rename-kill'));
  await restarted();
  refuseLater = false;
  const spool = new SpoolSet(new Spool(join(c.dataDir, 'spool')));
  const messages = (): Sink['messages'] => sink.messages.slice(sinkFrom);
  await c.waitFor('the message and its bounce finished', async () => !(await spool.list()).length && messages().some((m) => m.to.includes('later@example.test')));
  const bounces = messages().filter((m) => m.from === '' && m.to.includes('a@example.test'));
  assert.equal(bounces.length, 1, 'one bounce');
  assert.ok(bounces[0]!.data.toString().includes(id), 'the bounce names the message');
});

// Killed at the moment it records a partly delivered message's progress: the rename of its state file, after the next
// hop accepted one recipient and deferred the other. Nothing is lost once it has been restarted: the deferred
// recipient gets the message once; the accepted one at least once, and at most twice (accepted before the record:
// SMTP cannot do better, RFC 1047). Nothing is left in the spool: not even the temporary file of the state write the
// kill cut short.
test('the queue process killed as it records a partly delivered message: after its restart no recipient is lost', async () => {
  let refuseLater = true;
  decide = (stage, address) => (stage === 'rcpt' && refuseLater && address.startsWith('later@') ? { code: 451, text: '4.2.0 Try again later' } : null);
  const { c, sink, faults, restarted, sinkFrom } = await server();
  faults.armFor('rename-kill', '.state');
  const id = await submitMessage(c.port('in'), 'a@example.test', ['ok@example.test', 'later@example.test']);
  await c.waitFor('the queue process killed at the state file\'s rename', () => faults.taken('rename-kill'));
  await restarted();
  refuseLater = false;
  await c.waitFor('the message finished', async () => !(await new SpoolSet(new Spool(join(c.dataDir, 'spool'))).list()).includes(id));
  const copies = (rcpt: string): number => sink.messages.slice(sinkFrom).filter((m) => m.to.includes(rcpt)).length;
  assert.equal(copies('later@example.test'), 1, 'the deferred recipient: once');
  assert.ok(copies('ok@example.test') >= 1 && copies('ok@example.test') <= 2, `the accepted recipient: ${copies('ok@example.test')} copies`);
  // The killed process's temporary state file is removed by the restarted one's scan (its writer is gone), not
  // weeks later at the worker's next start.
  const queueDir = join(workerSpoolDir(c.dataDir, 0), 'queue');
  await c.waitFor('nothing left in the worker\'s queue folder', () => readdirSync(queueDir).length === 0);
});
