// A crash at every point of a message's life. One message to three recipients (one the next hop accepts, one it
// refuses for good, so a bounce is spooled and delivered, one it defers twice, so the message gets a state file,
// retries and moves out of the journal) goes through a real `postern serve` (supervisor, one worker, the queue
// process) to a real next hop on loopback. A first run counts the calls that change durable state in the spool
// (test/helpers/crash-walk.ts: journal appends and syncs, state files, renames, unlinks, done lists), in every
// process; the walk then runs the message again once per point, killing (SIGKILL) the process that makes that call,
// and checks what SMTP's promise needs once the supervisor has restarted it: every message that got its 250 is
// delivered to each recipient, the bounce too; nothing is delivered twice except across a kill between the next
// hop's 250 and the record of it; nothing is left in the spool, and `postern queue list` agrees.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { crashWalk, startWalkedServer, workerAndQueueReady, type CrashAction, type CrashPoint } from '../helpers/crash-walk.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { deliveryToSink, spooled, type ClusterProcess } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { queueListCommand } from '../../engine/cli/queue.ts';
import { workerSpoolDir } from '../../engine/cluster/spool-set.ts';

const walk = crashWalk();
const SENDER = 'a@example.test';
const RECIPIENTS = ['ok@example.test', 'bad@example.test', 'later@example.test'];

interface Outcome {
  /** The id the 250 named; null: no 250 came (the message was sent again until one did). */
  firstAcked: boolean;
  copies: Record<'ok' | 'later' | 'bounce' | 'bad', number>;
  /**
   * The walk's count when each message reached the next hop (its end of DATA), in the order they came, and whether the
   * armed point had been taken by then. Not told by the count alone: counting stops at the point taken (its file goes),
   * so a copy that arrives after the kill has the point's own number (more only if another process counted a call it
   * was making as the point went).
   */
  arrivals: Array<{ kind: 'ok' | 'later' | 'bounce' | 'mixed'; at: number; afterPoint: boolean }>;
  trace: CrashPoint[];
  /** The call the run was armed at, once taken. */
  hit: CrashPoint | undefined;
  roles: Map<number, string>;
  /** The supervisor's lines on children that died (killed by the walk, or by a hang check). */
  deaths: string[];
}

function kindOf(m: Sink['messages'][number]): 'ok' | 'later' | 'bounce' | 'mixed' {
  if (m.from === '') return 'bounce';
  if (m.to.length === 1 && m.to[0] === 'ok@example.test') return 'ok';
  if (m.to.length === 1 && m.to[0] === 'later@example.test') return 'later';
  return 'mixed';
}

/** Pids of the server's processes by role, as cluster.json says now. */
async function roles(c: ClusterProcess, into: Map<number, string>): Promise<void> {
  for (const p of (await c.cluster()).processes) if (p.pid) into.set(p.pid, p.role);
}


/** Whether a life has run `postern queue list` as a process already. */
let listedOnce = false;

/** The message's life, with the walk armed at `n` (0: only counted). */
async function life(n: number, action: CrashAction, opts: { body?: string; only?: { call: string; pathEnd: string } } = {}): Promise<Outcome> {
  let deferrals = 2;
  const arrivals: Outcome['arrivals'] = [];
  const counts: Array<{ at: number; afterPoint: boolean }> = [];
  const sink = await startSink({
    decide: (stage, address) => {
      if (stage === 'data') { const afterPoint = walk.taken(); counts.push({ at: walk.count(), afterPoint }); return null; }
      if (stage !== 'rcpt') return null;
      if (address === 'bad@example.test') return { code: 550, text: '5.1.1 No such user' };
      if (address === 'later@example.test' && deferrals > 0) { deferrals--; return { code: 451, text: '4.2.0 Try again later' }; }
      return null;
    },
  });
  const { c, dataDir, remove } = await startWalkedServer(walk, deliveryToSink(sink.port, { retrySchedule: [0.2], scanIntervalMs: 200 }));
  const pids = new Map<number, string>();
  try {
    await roles(c, pids);
    walk.arm(n, action, opts.only);
    let firstAcked = true;
    for (let tries = 0; ; tries++) {
      try {
        await submitMessage(c.port('in'), SENDER, RECIPIENTS, opts.body);
        break;
      } catch (err) {
        firstAcked = false;
        if (tries >= 3) throw err;
        await workerAndQueueReady(c); // a worker killed during the transaction is replaced; the client sends again
      }
    }
    const copies = (): Outcome['copies'] => ({
      ok: sink.messages.filter((m) => m.from !== '' && m.to.includes('ok@example.test')).length,
      later: sink.messages.filter((m) => m.from !== '' && m.to.includes('later@example.test')).length,
      bad: sink.messages.filter((m) => m.to.includes('bad@example.test')).length,
      bounce: sink.messages.filter((m) => m.from === '').length,
    });
    await c.waitFor('the message and its bounce delivered, and the spool empty', async () => {
      const k = copies();
      return k.ok >= 1 && k.later >= 1 && k.bounce >= 1 && (await spooled(c)).size === 0;
    });
    await roles(c, pids);
    sink.messages.forEach((m, i) => arrivals.push({ kind: kindOf(m), ...counts[i]! }));
    // Temporary files, orphan states and due requests are tidied by the queue process's scans.
    const queueDir = join(workerSpoolDir(dataDir, 0), 'queue');
    await c.waitFor(`nothing left in the worker's queue folder (${readdirSync(queueDir).join(', ')})`, () => readdirSync(queueDir).length === 0);
    // The command line once (the file's first life), its function in this process after (a process each proved no more).
    const config = join(c.dir, 'postern.yaml');
    const listed = listedOnce ? await runInProcess(() => queueListCommand({ json: true, config })) : await runCli(['queue', 'list', '--json', '-c', config]);
    listedOnce = true;
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual((JSON.parse(listed.stdout) as { messages: unknown[] }).messages, [], 'postern queue list: empty');
    const deaths = c.logs.filter((l) => /process died|hung/.test(String(l.msg))).map((l) => String(l.msg));
    return { firstAcked, copies: copies(), arrivals, trace: walk.trace(), hit: walk.hit(), roles: pids, deaths };
  } finally {
    walk.disarm();
    await c.stop();
    await sink.close();
    await remove();
  }
}

/** A point's file, its ids and numbers made `*`: the kind of point it is. */
function shape(root: string, p: CrashPoint): string {
  return p.path.slice(root.length).replace(/\.\d+\.[0-9a-f]+\.tmp$/, '.<pid>.<random>.tmp').replace(/[0-9a-z]{14,32}/g, '<id>').replace(/\d+/g, '*');
}

/**
 * Whether the kill of a run may have made the next hop get
 * a `kind` message twice: it came between the next hop's acceptance of a copy and the queue process's first call
 * that records it (a state file's rename, an unlink, a done line).
 */
function duplicateAllowed(o: Outcome, kind: 'ok' | 'later' | 'bounce', action: CrashAction): boolean {
  const hit = o.hit?.n ?? 0;
  const records = o.trace.filter((p) => o.roles.get(p.pid) === 'queue' && (p.call === 'rename' || p.call === 'unlink' || (p.call === 'write' && p.path.endsWith('.done'))));
  return o.arrivals.filter((a) => a.kind === kind || (a.kind === 'mixed' && kind !== 'bounce'))
    .some((a) => !a.afterPoint && !records.some((r) => r.n > a.at && (action === 'after' ? r.n <= hit : r.n < hit)));
}

function check(o: Outcome, action: CrashAction, where: string): void {
  const crashed = action === 'kill' || action === 'after';
  // A failed call crashes nothing, a slow one neither (no hang check takes a wait on the disk for a hang).
  if (!crashed) assert.deepEqual(o.deaths, [], `${where}: no process died`);
  for (const kind of ['ok', 'later', 'bounce'] as const) {
    // The client that was refused sends again, and only that copy is delivered.
    const most = crashed && (duplicateAllowed(o, kind, action) || !o.firstAcked) ? 2 : 1;
    assert.ok(o.copies[kind] >= 1 && o.copies[kind] <= most, `${where}: ${kind}: ${o.copies[kind]} copies (at most ${most})`);
  }
  assert.equal(o.copies.bad, 0, `${where}: the refused recipient`);
}

const root = (p: CrashPoint): string => p.path.replace(/\/data\/spool\/.*$/, '/data/spool');
const kindOfPoint = (o: Outcome, p: CrashPoint): string => `${o.roles.get(p.pid) ?? p.pid} ${p.call} ${shape(root(p), p)}`;

interface Point { n: number; action: CrashAction; only?: { call: string; pathEnd: string } }

/** Run the message's life once per point, checking each; the failures, all of them (one does not hide the next). */
async function walkPoints(t: { diagnostic(m: string): void }, points: Point[], body?: string): Promise<string[]> {
  const failures: string[] = [];
  for (const { n, action, only } of points) {
    let where = `${action} at ${only ? `${only.call} …${only.pathEnd} #` : ''}${n}`;
    try {
      const o = await life(n, action, { body, only });
      const hit = o.hit;
      assert.ok(hit && (!only || (hit.call === only.call && hit.path.endsWith(only.pathEnd))), `${where}: the point was not reached`);
      where += ` (${kindOfPoint(o, hit)})`;
      check(o, action, where);
      t.diagnostic(`${where}: ${JSON.stringify(o.copies)}${o.firstAcked ? '' : ' (sent again)'}`);
    } catch (err) {
      failures.push(`${where}: ${(err as Error).message.slice(0, 600)}`);
      t.diagnostic(`FAILED ${where}: ${(err as Error).message.slice(0, 600)}`);
    }
  }
  return failures;
}

/**
 * The points the walk takes in CI, each named by its call and file (and which of those calls), so that calls made
 * at the same time on two threads or in two processes cannot shift it: the worker's sync of the journal's folder at
 * intake (the record written, no 250 yet), the queue process's write of the bounce to its own journal, the rename of
 * the state file that records the first attempt (one recipient delivered, one bounced), the done line of the
 * delivered bounce and the removal of the delivered message (the move out of the journal has tests of its own:
 * test/cluster/queue-killed-moving.test.ts, test/spool/move-out-crash.test.ts). Every call, before and after it:
 * POSTERN_CRASH_WALK_ALL=1 (some 10 minutes); chosen ones: POSTERN_CRASH_WALK_AT=n,… (numbers from
 * POSTERN_CRASH_WALK_TRACE=1) with POSTERN_CRASH_WALK_ACTIONS=kill,after,eio,slow-eio.
 */
const TABLE: Point[] = [
  { n: 1, action: 'kill', only: { call: 'fsync', pathEnd: '/worker-0/journal' } },
  { n: 2, action: 'kill', only: { call: 'pwritev', pathEnd: '.seg' } },
  { n: 1, action: 'kill', only: { call: 'rename', pathEnd: '.state' } },
  { n: 1, action: 'kill', only: { call: 'write', pathEnd: '/spool/journal/0000000001.done' } },
  { n: 1, action: 'kill', only: { call: 'unlink', pathEnd: '.msg' } },
];

test('crash walk: the process that changes the spool killed at each kind of call, then restarted: nothing acknowledged is lost, nothing is sent twice but across a kill between the next hop\'s 250 and its record', { timeout: 1_800_000 }, async (t) => {
  const all = process.env.POSTERN_CRASH_WALK_ALL === '1';
  const only = process.env.POSTERN_CRASH_WALK_AT?.split(',').map(Number);
  let points = TABLE;
  if (all || only || process.env.POSTERN_CRASH_WALK_TRACE === '1') {
    const trace = await life(0, 'none');
    for (const p of trace.trace) t.diagnostic(`${p.n} ${kindOfPoint(trace, p)}`);
    const actions = (process.env.POSTERN_CRASH_WALK_ACTIONS?.split(',') ?? ['kill', 'after']) as CrashAction[];
    if (all || only) points = trace.trace.filter((p) => !only || only.includes(p.n)).flatMap((p) => actions.map((action) => ({ n: p.n, action })));
  }
  assert.deepEqual(await walkPoints(t, points), []);
});

test('crash walk: a sync of the journal that fails slowly (EIO after 1.5 s): the queue process does not deliver the record the client was refused for besides the copy it sends again', { timeout: 300_000 }, async (t) => {
  // The sync of the journal's folder that follows the record's own: the record is in the file (and readable) by then.
  assert.deepEqual(await walkPoints(t, [{ n: 1, action: 'slow-eio', only: { call: 'fsync', pathEnd: '/worker-0/journal' } }]), []);
});

test('crash walk: a call on the event loop that a failing disk answers slowly (EIO after 1.5 s in the call) is no hang: no process is killed, nothing is sent twice', { timeout: 300_000 }, async (t) => {
  // The journals are written on the event loop, synchronously: the worker's mark of a record acknowledged, the queue
  // process's record of the bounce and its done line. The watchdog took each such wait for a hang and killed the
  // process, whose deliveries under way were then made again.
  assert.deepEqual(await walkPoints(t, [
    { n: 2, action: 'slow-eio', only: { call: 'pwrite', pathEnd: '/worker-0/journal/0000000001.acked' } },
    { n: 1, action: 'slow-eio', only: { call: 'pwritev', pathEnd: '/spool/journal/0000000001.seg' } },
    { n: 1, action: 'slow-eio', only: { call: 'write', pathEnd: '/spool/journal/0000000001.done' } },
  ]), []);
});

/** A message too large for the journal: a file of its own, written in incoming/, renamed into queue/, the folder synced. */
const LARGE = `Subject: large\r\n\r\n${'0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\r\n'.repeat(16_000)}`;

test('crash walk: a large message whose rename into the queue folder is not made durable (its folder sync fails slowly): the queue process does not deliver it besides the copy the client sends again', { timeout: 300_000 }, async (t) => {
  // The worker's first sync of its queue folder: the one after the message file's rename.
  assert.deepEqual(await walkPoints(t, [{ n: 1, action: 'slow-eio', only: { call: 'fsync', pathEnd: '/worker-0/queue' } }], LARGE), []);
});
