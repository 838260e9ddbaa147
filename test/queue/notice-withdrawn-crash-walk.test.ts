// A crash at every call between an attempt's decision to bounce and its record, in a run of that attempt that
// withdraws the notice an earlier crashed run spooled and spools its replacement. A real `postern serve` (supervisor,
// one worker, the queue process) delivers one message through a real next hop on loopback:
// - run 1 of attempt 1: `flaky` and `second` refused (550): a notice naming both is spooled (slot 0), and the queue
//   process is killed at the attempt's record;
// - run 2: `flaky` refused, `second` accepted: slot 0 is withdrawn (it names a delivered recipient) and a notice naming
//   `flaky` alone is spooled (slot 1); the queue process is killed at the walk's point, a call that changes the spool
//   between the next hop's replies and the attempt's record;
// - later runs: as run 2.
// Three shapes: with a third recipient deferred in runs 1 and 2 (the record is the message's state file); without
// (the record is the message's removal, a done mark); and without, `second` asking for a success notice as well
// (NOTIFY=SUCCESS,FAILURE: run 2 spools one). Whatever the point, the sender gets exactly one bounce naming `flaky`,
// none naming `second`, and one success notice for `second` when it asked for one. CI takes the points around the replacement's commit (the last write of its
// journal record's acknowledgement, and the record's first call after it); every point: POSTERN_CRASH_WALK_ALL=1
// (some 6 minutes). All shapes' runs share one server and next hop, one after another: each starts with the spool
// empty and the queue process ready (its run 2 in a queue process started after run 1's kill, as on a new server), and
// a kill must land on the kind of call the counting run traced at that number. A shape that fails stops the server:
// the next starts one of its own.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { crashWalk, startWalkedServer, workerAndQueueReady, type CrashAction, type CrashPoint } from '../helpers/crash-walk.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { deliveryToSink, spooled, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient, sendWithParams, submitMessage } from '../helpers/smtp-client.ts';

const walk = crashWalk();
const SENDER = 'a@example.test';

type Shape = 'deferred third' | 'finished' | 'success asked';

interface Life { bounces: string[]; trace: CrashPoint[]; id: string; killedAt: CrashPoint | undefined }

/** The current run's shape and point, and how often the next hop has seen `second` and `third` in it. */
let run = { shape: 'finished' as Shape, n: 0, action: 'none' as CrashAction, secondRuns: 0, thirdRuns: 0 };

interface Server { c: ClusterProcess; sink: Sink; stop(): Promise<void> }

/** A server (one worker) delivering to a next hop that answers as the current run says. */
async function startServer(): Promise<Server> {
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage !== 'rcpt') return null;
      if (address === 'flaky@example.test') return { code: 550, text: '5.1.1 No such user' };
      if (address === 'second@example.test' && ++run.secondRuns === 1) return { code: 550, text: '5.1.1 No such user (for now)' };
      // Run 2 has begun (run 1's kill was taken): the walk counts from its replies on.
      if (address === 'second@example.test' && run.secondRuns === 2) walk.arm(run.n, run.action);
      if (run.shape === 'deferred third' && address === 'third@example.test' && ++run.thirdRuns <= 2) return { code: 451, text: '4.2.0 Try again later' };
      return null;
    },
  });
  const { c, remove } = await startWalkedServer(walk, deliveryToSink(sink.port, { retrySchedule: [0.2], scanIntervalMs: 200 }));
  return { c, sink, stop: async () => { await c.stop(); await sink.close(); await remove(); } };
}

async function life({ c, sink }: Server, shape: Shape, n: number, action: CrashAction): Promise<Life> {
  run = { shape, n, action, secondRuns: 0, thirdRuns: 0 };
  // The last run's kill replaced the queue process: its replacement may still be starting.
  await workerAndQueueReady(c);
  const first = sink.messages.length;
  const messages = (): typeof sink.messages => sink.messages.slice(first);
  try {
    walk.arm(1, 'kill', RECORD[shape]);
    const to = ['flaky@example.test', 'second@example.test', ...(shape === 'deferred third' ? ['third@example.test'] : [])];
    const id = shape === 'success asked' ? await submitAskingSuccess(c.port('in'), to) : await submitMessage(c.port('in'), SENDER, to);
    const delivered = (to: string): number => messages().filter((m) => m.from !== '' && m.to.includes(to)).length;
    const bounces = (): string[] => messages().filter((m) => m.from === '').map((m) => m.data.toString('latin1'));
    await c.waitFor('second (and third) delivered, a bounce, and the spool empty', async () =>
      delivered('second@example.test') >= 1 && (shape !== 'deferred third' || delivered('third@example.test') >= 1) && bounces().length >= 1 && (await spooled(c)).size === 0);
    const trace = walk.trace();
    const hit = walk.hit();
    walk.disarm();
    // Anything still on its way (a second bounce) is in by the time the spool is empty; nothing is left to send.
    return { bounces: bounces(), trace, id, killedAt: action === 'kill' ? hit : undefined };
  } finally {
    walk.disarm();
  }
}

/** `second` asks for a success notice too (NOTIFY=SUCCESS,FAILURE): run 2 also spools one, naming it. */
async function submitAskingSuccess(port: number, to: string[]): Promise<string> {
  const client = await SmtpTestClient.connect(port);
  await client.hello();
  const id = await sendWithParams(client, `<${SENDER}>`, to.map((r) => (r.startsWith('second') ? `<${r}> NOTIFY=SUCCESS,FAILURE` : `<${r}>`)), 'Subject: walk\r\n\r\nbody\r\n');
  await client.quit();
  return id;
}

/** The failure notices (not the success ones) naming `who`. */
const naming = (bounces: string[], who: string): string[] => bounces.filter((b) => /Action: failed/.test(b) && new RegExp(`Final-Recipient: rfc822; ${who}@example\\.test`).test(b));
const shortly = (p: CrashPoint): string => `${p.call} ${p.path.replace(/^.*\/data\/spool/, '').replace(/\.\d+\.[0-9a-f]+\.tmp$/, '.<tmp>')}`;
/** The call and its file, without message ids and segment numbers (which differ from run to run). */
const kindOf = (p: CrashPoint): string => shortly(p).replace(/[0-9a-z]{14,32}/g, '<id>').replace(/\d+/g, '*');

/** The attempt's record in each shape: the rename of the message's state file, or the done mark of its journal record. */
const RECORD: Record<Shape, { call: string; pathEnd: string }> = {
  'deferred third': { call: 'rename', pathEnd: '.state' },
  finished: { call: 'write', pathEnd: '.done' },
  'success asked': { call: 'write', pathEnd: '.done' },
};
const isRecord = (shape: Shape, id: string, p: CrashPoint): boolean =>
  shape === 'deferred third' ? p.call === 'rename' && p.path.endsWith(`${id}.state`) : p.call === 'write' && p.path.endsWith('.done') && p.path.includes('/worker-');

/** The server the last shape left running (none after a shape that failed). */
let shared: Server | null = null;
after(async () => { await shared?.stop(); });

for (const shape of ['deferred third', 'finished', 'success asked'] as const) {
  test(`crash walk (${shape}): a run that withdraws a crashed run's notice and spools its replacement, killed up to its record, sends one bounce`, { timeout: 1_800_000 }, async (t) => {
    const server = shared ?? await startServer();
    shared = null;
    let passed = false;
    try {
      const counted = await life(server, shape, 0, 'none');
      assert.equal(naming(counted.bounces, 'flaky').length, 1);
      // The points: from run 2's replies up to the call that records its attempt (included).
      const record = counted.trace.findIndex((p) => isRecord(shape, counted.id, p));
      assert.ok(record >= 0, `the record is in the trace: ${counted.trace.map(shortly).join('; ')}`);
      const all = counted.trace.slice(0, record + 1);
      for (const p of all) t.diagnostic(`${p.n} ${shortly(p)}`);
      const only = process.env.POSTERN_CRASH_WALK_AT?.split(',').map(Number);
      const acked = all.findLastIndex((p) => p.call === 'pwrite' && p.path.endsWith('.acked'));
      const points = process.env.POSTERN_CRASH_WALK_ALL === '1' ? all : only ? all.filter((p) => only.includes(p.n)) : all.slice(acked, acked + 2);
      assert.ok(points.length > 0);
      const failures: string[] = [];
      for (const p of points) {
        const o = await life(server, shape, p.n, 'kill');
        const where = `kill at ${p.n} (${o.killedAt ? shortly(o.killedAt) : 'not reached'})`;
        if (!o.killedAt || kindOf(o.killedAt) !== kindOf(p)) failures.push(`${where}: not the point traced (${shortly(p)})`);
        const flaky = naming(o.bounces, 'flaky').length;
        const second = naming(o.bounces, 'second').length;
        const relayed = o.bounces.filter((b) => /Action: relayed/.test(b) && /Final-Recipient: rfc822; second@example\.test/.test(b)).length;
        t.diagnostic(`${where}: ${flaky} bounce(s) naming flaky, ${second} naming second, ${relayed} success notice(s) for second`);
        const expected = shape === 'success asked' ? 1 : 0;
        if (flaky !== 1 || second !== 0 || relayed !== expected) failures.push(`${where}: ${flaky} bounce(s) naming flaky, ${second} naming second, ${relayed} success notice(s) for second`);
      }
      assert.deepEqual(failures, []);
      passed = true;
    } finally {
      if (passed) shared = server;
      else await server.stop();
    }
  });
}
