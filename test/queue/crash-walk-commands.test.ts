// A crash at every point of `postern queue retry|delete|release` on a message a running server has deferred: the
// calls that change the spool, in the command's process and in the queue process that acts on what it wrote, are
// counted (test/helpers/crash-walk.ts), and the walk runs the command again once per point with the process that
// makes that call killed (SIGKILL). The operator runs a command again when it was killed. Then: a retried or
// released message is delivered (twice only across a kill between the next hop's 250 and its record), a deleted
// one never is, nothing is left in the queue folder, and `postern queue list` agrees. One server (and next hop) serves
// every run, one after another: each run starts with the spool empty and both processes ready, as a new server would.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { crashWalk, startWalkedServer, workerAndQueueReady, type CrashAction, type CrashPoint } from '../helpers/crash-walk.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { deliveryToSink, spooled, type ClusterProcess } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';
import { workerSpoolDir } from '../../engine/cluster/spool-set.ts';

const walk = crashWalk();
type Command = 'retry' | 'delete' | 'release';

interface Outcome { copies: number; arrivals: number[]; trace: CrashPoint[]; hit: CrashPoint | undefined; roles: Map<number, string>; cliPids: Set<number> }


/** What the next hop does in the current run: `later@example.test` deferred (451) until `accept`; the walk's count at each DATA. */
let run = { accept: false, arrivals: [] as number[] };
interface Shared { c: ClusterProcess; dataDir: string; sink: Sink; remove(): Promise<void> }
let shared: Promise<Shared> | undefined;
/** The server the runs share (started by the first); after a run that failed, a new one. */
function server(): Promise<Shared> {
  shared ??= (async () => {
    const sink = await startSink({
      decide: (stage, address) => {
        if (stage === 'data') { run.arrivals.push(walk.count()); return null; }
        return stage === 'rcpt' && address === 'later@example.test' && !run.accept ? { code: 451, text: '4.2.0 Try again later' } : null;
      },
    });
    return { ...await startWalkedServer(walk, deliveryToSink(sink.port, { retrySchedule: [3600], scanIntervalMs: 200 })), sink };
  })();
  return shared;
}
async function stopShared(): Promise<void> {
  const s = await shared?.catch(() => undefined);
  shared = undefined;
  if (!s) return;
  await s.c.stop();
  await s.sink.close();
  await s.remove();
}
after(stopShared);

/** A message deferred once (its next attempt an hour away), then `command` run on it with the walk armed at `n`. */
async function life(command: Command, n: number, action: CrashAction, only?: { call: string; pathEnd: string }): Promise<Outcome> {
  run = { accept: false, arrivals: [] };
  const { arrivals } = run;
  const { c, dataDir, sink } = await server();
  // The last run's kill replaced the queue process: its replacement may still be starting.
  await workerAndQueueReady(c);
  const first = sink.messages.length;
  const copies = (): number => sink.messages.length - first;
  const roles = new Map<number, string>();
  const cliPids = new Set<number>();
  const config = join(c.dir, 'postern.yaml');
  const queueDir = join(workerSpoolDir(dataDir, 0), 'queue');
  const cli = async (...args: string[]): Promise<{ code: number | null; signal?: NodeJS.Signals | null; stdout: string; stderr: string }> =>
    runCli(['queue', ...args, '-c', config], { env: walk.env, onSpawn: (pid) => cliPids.add(pid) });
  let ok = false;
  try {
    const id = await submitMessage(c.port('in'), 'a@example.test', ['later@example.test']);
    await c.waitFor('the first attempt recorded', () => existsSync(join(queueDir, `${id}.state`)));
    if (command === 'release') assert.equal((await cli('hold', id)).code, 0);
    for (const p of (await c.cluster()).processes) if (p.pid) roles.set(p.pid, p.role);
    if (command !== 'delete') run.accept = true;
    walk.arm(n, action, only);
    for (let tries = 0; ; tries++) {
      const r = await cli(command, id);
      if (r.signal === 'SIGKILL' && tries < 2) continue; // the operator runs it again
      // Run again after the kill: the queue process may have finished the message meanwhile.
      if (tries > 0 && /no such message in the queue/.test(r.stderr)) break;
      assert.equal(r.code, 0, `postern queue ${command}: ${r.stderr}`);
      break;
    }
    if (command === 'delete') run.accept = true;
    const empty = async (): Promise<boolean> => (await spooled(c)).size === 0 && readdirSync(queueDir).length === 0;
    // Delivered, and the queue process killed before it recorded that: the message waits for its next attempt (an hour
    // away: the retry's request was taken). The operator, who sees it still queued, asks for a retry again.
    await c.waitFor('the spool empty, or the message delivered', async () => await empty() || copies() > 0, 30_000);
    if (!(await empty()) && command !== 'delete') {
      await c.waitFor('the spool empty, or the queue process back', async () => await empty() || (await c.cluster()).processes.some((p) => p.role === 'queue' && p.ready && !roles.has(p.pid!)));
      if (!(await empty())) {
        const again = await cli('retry', id);
        assert.ok(again.code === 0 || /no such message in the queue/.test(again.stderr), again.stderr);
      }
    }
    try {
      await c.waitFor('the spool empty, and nothing left in the worker\'s queue folder', empty, 30_000);
    } catch (err) {
      throw new Error(`${(err as Error).message.slice(0, 200)}: spooled ${[...await spooled(c)].join(' ')}; queue/ ${readdirSync(queueDir).join(' ')}; ${copies()} copies; logs: ${c.lines.filter((l) => /"level":(40|50)/.test(l)).slice(-5).join('\n')}`);
    }
    for (const p of (await c.cluster()).processes) if (p.pid && !roles.has(p.pid)) roles.set(p.pid, p.role);
    const listed = await runCli(['queue', 'list', '--json', '-c', config]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual((JSON.parse(listed.stdout) as { messages: unknown[] }).messages, [], 'postern queue list: empty');
    ok = true;
    return { copies: copies(), arrivals, trace: walk.trace(), hit: walk.hit(), roles, cliPids };
  } finally {
    walk.disarm();
    if (!ok) await stopShared();
  }
}

const roleOf = (o: Outcome, pid: number): string => o.cliPids.has(pid) ? 'command' : o.roles.get(pid) ?? String(pid);
const kindOf = (o: Outcome, p: CrashPoint): string =>
  `${roleOf(o, p.pid)} ${p.call} ${p.path.replace(/^.*\/data\/spool/, '').replace(/\.\d+\.[0-9a-f]+\.tmp$/, '.<pid>.<random>.tmp').replace(/[0-9a-z]{14,32}/g, '<id>').replace(/\d+/g, '*')}`;

/**
 * Whether the run's kill came between the next hop's
 * acceptance and the queue process's first call that records it (an unlink, a rename, a done line): then it may
 * have been delivered twice.
 */
function duplicateAllowed(o: Outcome): boolean {
  const hit = o.hit?.n ?? 0;
  const records = o.trace.filter((p) => roleOf(o, p.pid) === 'queue' && (p.call === 'rename' || p.call === 'unlink' || (p.call === 'write' && p.path.endsWith('.done'))));
  return o.arrivals.some((at) => at < hit && !records.some((r) => r.n > at && r.n < hit));
}

interface Point { n: number; only?: { call: string; pathEnd: string } }

/**
 * The points CI takes, named by call and file: for `retry`, the command's sync of the queue folder once its due
 * request is renamed in, and the queue process taking the request aside once its attempt is made; for `release`, the
 * command's unlink of the hold and its first sync of the queue folder; for `delete`, the sync of the command's done
 * line, and the unlink of the state file.
 * Every call: POSTERN_CRASH_WALK_ALL=1 (some 10 minutes), or POSTERN_CRASH_WALK_AT=n,… (numbers from its trace).
 */
const TABLE: Record<Command, Point[]> = {
  retry: [
    { n: 1, only: { call: 'fsync', pathEnd: '/worker-0/queue' } },
    { n: 1, only: { call: 'rename', pathEnd: '.tmp' } }, // the request taken aside to be removed (Spool.clearDueRequest)
  ],
  release: [
    { n: 1, only: { call: 'unlink', pathEnd: '.held' } },
    { n: 1, only: { call: 'fsync', pathEnd: '/worker-0/queue' } },
  ],
  delete: [
    { n: 1, only: { call: 'fsync', pathEnd: '.done' } },
    { n: 1, only: { call: 'unlink', pathEnd: '.state' } },
  ],
};

for (const command of ['retry', 'release', 'delete'] as const) {
  test(`crash walk: postern queue ${command} and the queue process killed at each call that changes the spool`, { timeout: 1_800_000 }, async (t) => {
    const all = process.env.POSTERN_CRASH_WALK_ALL === '1';
    const only = process.env.POSTERN_CRASH_WALK_AT?.split(',').map(Number);
    let points = TABLE[command];
    if (all || only) {
      const trace = await life(command, 0, 'none');
      assert.equal(trace.copies, command === 'delete' ? 0 : 1);
      for (const p of trace.trace) t.diagnostic(`${p.n} ${kindOf(trace, p)}`);
      points = trace.trace.filter((p) => !only || only.includes(p.n)).map((p) => ({ n: p.n }));
    }
    const failures: string[] = [];
    for (const { n, only: named } of points) {
      let where = `kill at ${named ? `${named.call} …${named.pathEnd} #` : ''}${n}`;
      try {
        const o = await life(command, n, 'kill', named);
        const hit = o.hit;
        assert.ok(hit && (!named || (hit.call === named.call && hit.path.endsWith(named.pathEnd))), `${where}: the point was not reached`);
        where += ` (${kindOf(o, hit)})`;
        const most = command === 'delete' ? 0 : duplicateAllowed(o) ? 2 : 1;
        const least = command === 'delete' ? 0 : 1;
        assert.ok(o.copies >= least && o.copies <= most, `${where}: ${o.copies} copies delivered (${least}..${most})`);
        t.diagnostic(`${where}: ${o.copies} copies`);
      } catch (err) {
        failures.push(`${where}: ${(err as Error).message.slice(0, 600)}`);
        t.diagnostic(`FAILED ${where}: ${(err as Error).message.slice(0, 600)}`);
      }
    }
    assert.deepEqual(failures, []);
  });
}
