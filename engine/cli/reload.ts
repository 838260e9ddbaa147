/**
 * `postern reload`: reloads the running server and waits for the outcome, for systemd's ExecReload (and for an
 * administrator's shell). `kill -HUP $MAINPID` returned as soon as the signal was sent, so `systemctl reload postern`
 * said nothing of a refused reload: the broken edit was found later, or at the next restart.
 *
 * It asks the status socket for each process's count of reloads begun, sends SIGHUP to the server (the holder of the
 * data directory's lock), and asks again until every process has begun and finished one more (one thrown away for a
 * newer build, as an input changed while it was read, does not count). Exit 0 when each took it, 1 when the reload
 * was refused (its errors on stderr, file:line:col first), 3 when no server runs, 4 when one runs and does not
 * answer, or has not finished within --timeout.
 *
 * Not Type=notify-reload (systemd 253): systemd then sends the signal and waits for READY=1, but a process cannot
 * tell it that the reload failed, so `systemctl reload` succeeds either way; and RHEL 9's systemd is 252.
 */
import { resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { statusSocket } from '../cluster/process-model.ts';
import { lockHolder } from '../spool/data-dir-lock.ts';
import { ANSWER_WITHIN_MS, ask, dataDirOf, explainNoStatus, NOT_ANSWERING, NOT_RUNNING } from './status.ts';

/** Longer than a build's own deadline (a script whose top level never returns is a refused reload by then). */
const DEFAULT_TIMEOUT_S = 120;
const ASK_EVERY_MS = 200;
/** The last question near --timeout still has this long for its answer (ms). */
const MIN_ANSWER_MS = 500;

/** One process's reload counts, as the supervisor relays them (ChildReloadState). */
interface ProcessReloads { pid?: number; generation: number; checks?: number; supersededBuilds?: number; lastError: string[] | null }
interface Status { lastError?: string[] | null; generations?: Record<string, ProcessReloads>; pendingRestart?: string[] }

/** Reloads begun and not thrown away: one more means a build that read the inputs after the count was taken. */
const finished = (p: ProcessReloads | undefined): number => (p?.checks ?? 0) - (p?.supersededBuilds ?? 0);

export async function reloadCommand(opts: { config?: string; dataDir?: string; timeout?: string }): Promise<number> {
  const dataDir = opts.dataDir ? resolve(opts.dataDir) : dataDirOf(opts.config);
  const socket = statusSocket(dataDir);
  const timeoutMs = (opts.timeout === undefined ? DEFAULT_TIMEOUT_S : Number(opts.timeout)) * 1000;
  if (!(timeoutMs > 0)) {
    process.stderr.write(`postern: --timeout ${opts.timeout}: a number of seconds above 0\n`);
    return 1;
  }
  // Each question within what is left of --timeout (the usual wait at most): a hung server must not keep the command
  // past it (`systemctl reload` waits on it).
  const started = performance.now();
  const within = (): number => Math.max(MIN_ANSWER_MS, Math.min(ANSWER_WITHIN_MS, started + timeoutMs - performance.now()));
  let before: Status;
  try {
    before = await ask<Status>(socket, '/status', within());
  } catch (err) {
    return explainNoStatus(err, socket, dataDir, opts, 'reload');
  }
  const counts = Object.entries(before.generations ?? {});
  // Nothing to wait on: an outcome said now would be no reload's.
  if (!counts.length) {
    process.stderr.write(`postern: the server on ${socket} has no process that has reported its configuration yet (starting?): try again, or see postern status\n`);
    return NOT_ANSWERING;
  }
  if (counts.some(([, p]) => p.checks === undefined)) {
    process.stderr.write('postern: the running server is of an older release that does not count its reloads: reload it with kill -HUP and see postern status\n');
    return NOT_ANSWERING;
  }
  const server = lockHolder(dataDir);
  if (server === null) {
    process.stderr.write(`postern: not running (no live process holds the lock of ${dataDir})\n`);
    return NOT_RUNNING;
  }
  try {
    process.kill(server, 'SIGHUP');
  } catch (err) {
    // Gone between the lock check and the signal: not running (3), not a refused reload (1).
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    process.stderr.write(`postern: not running (the process that held the lock of ${dataDir} has exited)\n`);
    return NOT_RUNNING;
  }
  const deadline = started + timeoutMs;
  for (;;) {
    await delay(ASK_EVERY_MS);
    let now: Status;
    try {
      now = await ask<Status>(socket, '/status', within());
    } catch (err) {
      return explainNoStatus(err, socket, dataDir, opts, 'reload');
    }
    // A process replaced meanwhile built its generation from the inputs as they are now. Its counts start again and
    // soon equal the old one's (the check at ready): told by its pid, else it was waited for until --timeout.
    const waiting = counts.filter(([name, was]) => {
      const is = now.generations?.[name];
      if (is === undefined || (is.pid !== undefined && is.pid !== was.pid)) return false;
      return finished(is) <= finished(was) && (is.checks ?? 0) >= (was.checks ?? 0);
    }).map(([name]) => name);
    if (!waiting.length) return outcome(now);
    if (performance.now() > deadline) {
      process.stderr.write(`postern: the reload has not finished within ${timeoutMs / 1000} s in ${waiting.join(', ')} (see postern status and the server's log)\n`);
      return NOT_ANSWERING;
    }
  }
}

function outcome(status: Status): number {
  if (status.lastError?.length) {
    process.stderr.write(`postern: reload refused, the running configuration stays in force:\n${status.lastError.map((l) => `${l}\n`).join('')}`);
    return 1;
  }
  const generations = [...new Set(Object.values(status.generations ?? {}).map((p) => p.generation))];
  process.stdout.write(`postern: reloaded (generation ${generations.join(', ')})\n`);
  for (const change of status.pendingRestart ?? []) process.stderr.write(`postern: needs a restart to take effect: ${change}\n`);
  return 0;
}
