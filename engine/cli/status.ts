/**
 * `postern status`: asks the running server (the supervisor's status socket in the data directory) for
 * its state: generation, reloads, the last reload error with file:line, pending restarts computed against
 * the listeners actually bound, processes and fences, queue size. Exit 0 when it runs and its last reload
 * succeeded, 1 when this user may not ask (the socket is the server user's), 2 when that reload was refused, 3 when no server runs, 4 when one runs and does not answer in
 * time (hung, or too busy) or answers with something that is not a status (its error, not HTTP, not JSON, too large), or holds the data
 * directory's lock with no status socket (starting), 5 when it answers with a process not ready (dead and being replaced, starting), or not ready for mail as /readyz says (a spool read-only or full, Redis). A configuration file with errors does not stop it: the data directory is still
 * found, the errors are printed, the server still answers.
 */
import { dirname, join, resolve } from 'node:path';
import { parse } from 'yaml';
import { loadStartConfig } from '../config/start-config.ts';
import { readInputFileSync } from '../config/input-file.ts';
import { statusSocket } from '../cluster/process-model.ts';
import { shortSocketPath } from '../admin/unix-socket-path.ts';
import { terminalSafe } from '../queue/terminal-safe.ts';
import { LOCK_FILE, lockHolder } from '../spool/data-dir-lock.ts';
import { envKnob } from '../config/env-knob.ts';
import { deadlineAfterReads } from '../timing/deadline-after-reads.ts';

// Not `import … from 'node:http'`: an ESM import of node:http reads every export, and one of them loads Node's fetch
// (undici): ~20 ms of CPU at every process start (test/app/startup-modules.test.ts).
const http = process.getBuiltinModule('node:http');

export const NOT_RUNNING = 3;
export const NOT_ANSWERING = 4;
export const DEGRADED = 5;
/**
 * The whole answer, not only each read: a server that answers a byte at a time is not answering either.
 * POSTERN_STATUS_ANSWER_MS sets another: tests of a server that cannot answer (stopped) shorten the wait for nothing.
 */
export const ANSWER_WITHIN_MS = envKnob('POSTERN_STATUS_ANSWER_MS', 10_000);
/**
 * A status is a few kilobytes (a few more per fence); anything past this is not one. Unbounded, an answer
 * without end filled the client's memory until a string could grow no more, and it crashed with a stack trace.
 */
const MAX_ANSWER_BYTES = 64 << 20;
/** Enough of a refusal's text to say why (the supervisor's 500 carries the error that stopped the status). */
const SHOWN_BYTES = 500;

export async function statusCommand(opts: { config?: string; dataDir?: string }): Promise<number> {
  const dataDir = opts.dataDir ? resolve(opts.dataDir) : dataDirOf(opts.config);
  const socket = statusSocket(dataDir);
  let status: {
    lastError?: string[] | null; cluster?: { processes?: Array<{ role: string; index: number; ready: boolean }> };
    readiness?: { ready: boolean; checks: Record<string, { ok: boolean; detail?: string }> };
  };
  try {
    status = await ask(socket, '/status');
  } catch (err) {
    return explainNoStatus(err, socket, dataDir, opts);
  }
  process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
  if (status.lastError) return 2;
  const down = (status.cluster?.processes ?? []).filter((p) => !p.ready).map((p) => `${p.role} ${p.index}`);
  if (down.length) {
    process.stderr.write(`postern: running, but not ready: ${down.join(', ')} (a process that died is being replaced; see cluster.processes)\n`);
    return DEGRADED;
  }
  // What /readyz says: a spool read-only or below its floors, Redis for a listener that needs it, no worker taking connections.
  const failing = Object.entries(status.readiness?.checks ?? {}).filter(([, c]) => !c.ok);
  if (failing.length) {
    process.stderr.write(`postern: running, but not ready (new mail is refused, /readyz answers 503): ${failing.map(([name, c]) => `${name}: ${c.detail ?? 'failed'}`).join('; ')}\n`);
    return DEGRADED;
  }
  return 0;
}

/**
 * What a failed ask of the status socket means, said on stderr; the exit code: 1 not allowed, 3 not running,
 * 4 a server there that does not answer (or not with a status).
 */
export function explainNoStatus(err: unknown, socket: string, dataDir: string, opts: { dataDir?: string }, command = 'status'): number {
  // A socket that accepted the connection has a server behind it (a dead one's refuses it, or is gone).
  if (err instanceof NoAnswer) {
    process.stderr.write(`postern: the server does not answer on ${socket} within ${err.withinMs / 1000} s: it is hung or overloaded (its processes: ${join(dataDir, 'cluster.json')})\n`);
    return NOT_ANSWERING;
  }
  // Something answered: "not running" would have an on-call start a second server beside it.
  if (err instanceof BadAnswer) {
    process.stderr.write(`postern: the server on ${socket} gave no status: ${err.message}\n`);
    return NOT_ANSWERING;
  }
  // The socket is the server user's only (mode 0600): "not running" would send an on-call the wrong way.
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EACCES' || code === 'EPERM') {
    process.stderr.write(`postern: cannot ask the server on ${socket}: permission denied: run postern ${command} as the server's user, or as root\n`);
    return 1;
  }
  // Nothing on the socket, but a live server holds the data directory: it is starting (the socket is made once every
  // process is ready, which a slow start takes minutes to be), or the socket was removed and is being made again.
  const holder = lockHolder(dataDir);
  if (holder !== null) {
    process.stderr.write(`postern: a server runs on ${dataDir} (process ${holder}, its lock ${join(dataDir, LOCK_FILE)}) but nothing answers on ${socket} (${(err as Error).message}): it is starting (the socket is made once every process is ready), or the socket was removed and is being made again; see its log\n`);
    return NOT_ANSWERING;
  }
  // A server started before `dataDir` was edited runs on with the old one (a restart applies it): say where to ask.
  const moved = opts.dataDir ? '' : `; a server started before dataDir was changed runs with its old one until restarted: postern ${command} --data-dir <that folder>`;
  process.stderr.write(`postern: not running (no server answers on ${socket}: ${(err as Error).message})${moved}\n`);
  return NOT_RUNNING;
}

/**
 * The data directory of this configuration. A file the running server would refuse (a reload error) still
 * names it: then only `dataDir` is read from the YAML, and the problems go to stderr.
 */
export function dataDirOf(configPath: string | undefined): string {
  // Regular files only: a FIFO in its place (the very fault status must show) would block the read for ever.
  try {
    return loadStartConfig({ configPath, regularFileOnly: true }).config.dataDir;
  } catch (err) {
    process.stderr.write(`postern: the configuration has errors (a running server keeps its last good one):\n${(err as Error).message}\n`);
    if (!configPath) return resolve('data');
    let dataDir: unknown;
    try {
      dataDir = (parse(readInputFileSync(configPath).toString('utf8')) as { dataDir?: unknown } | null)?.dataDir;
    } catch { /* not even YAML: the default */ }
    return resolve(dirname(configPath), typeof dataDir === 'string' ? dataDir : './data');
  }
}

/** Connected, and no whole answer in time (`withinMs`). */
class NoAnswer extends Error {
  readonly withinMs: number;
  constructor(withinMs: number) {
    super(`no answer within ${withinMs / 1000} s`);
    this.withinMs = withinMs;
  }
}
/** Connected, and answered with something that is not a status: an error, not HTTP, not JSON, or too large. */
class BadAnswer extends Error {}

/** `withinMs`: how long an answer is waited for (less than the usual for a command that must end by its own deadline). */
export function ask<T>(socketPath: string, path: string, withinMs = ANSWER_WITHIN_MS): Promise<T> {
  const socket = shortSocketPath(socketPath);
  return new Promise<T>((resolvePromise, reject) => {
    // Why this side ended the request (the deadline, an answer too large): the request and the response may each
    // report it in their own words (ECONNRESET, "aborted"), and the first to do so settles the promise.
    let ended: Error | null = null;
    const end = (why: Error): void => {
      ended ??= why;
      req.destroy(why);
    };
    const fail = (err: Error): void => {
      cancelDeadline();
      reject(ended ?? err);
    };
    const req = http.get({ socketPath: socket.path, path }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (d: Buffer) => {
        size += d.length;
        if (size > MAX_ANSWER_BYTES) end(new BadAnswer(`its answer is too large (over ${MAX_ANSWER_BYTES >> 20} MiB)`));
        else chunks.push(d);
      });
      res.on('end', () => {
        cancelDeadline();
        const body = Buffer.concat(chunks);
        if (res.statusCode !== 200) {
          reject(new BadAnswer(`HTTP ${res.statusCode} ${shown(body)}`));
          return;
        }
        let answer: unknown;
        try { answer = JSON.parse(body.toString('utf8')); } catch (err) { reject(new BadAnswer(`${(err as Error).message}: ${shown(body)}`)); return; }
        if (isStatus(answer)) resolvePromise(answer as T);
        else reject(new BadAnswer(`its JSON is not a postern status (no cluster.processes): ${shown(body)}`));
      });
      // Closed before the length it announced: only the response says so (the request is done), and unheard, the
      // command waited out its deadline, whose destroy() of a finished request settled nothing: exit 13 and a warning.
      res.on('error', (err) => fail(new BadAnswer(`the connection closed before the whole answer came (${err.message}): the server stopped meanwhile, or is being replaced`)));
    });
    let connected = false;
    req.once('socket', (s) => s.once('connect', () => { connected = true; }));
    // Judged after the sockets are read: a command that gets the CPU back late (a loaded host) runs its timers
    // first, and an answer that had come in time, waiting in the socket, was given up on as "hung or overloaded".
    const cancelDeadline = deadlineAfterReads(withinMs, () => end(connected ? new NoAnswer(withinMs) : new Error(`no connection within ${withinMs / 1000} s`)));
    req.on('error', (err) => {
      if (!connected || ended) {
        fail(err);
        return;
      }
      // The HTTP parser's errors (HPE_…): bytes came back, from something that does not speak HTTP. Anything else
      // after the connection was accepted (EPIPE, ECONNRESET) is a server closing it unanswered: its connections
      // all taken (the status socket holds 64), or stopped meanwhile. Either way a server was there.
      fail(new BadAnswer((err as NodeJS.ErrnoException).code?.startsWith('HPE_') ? `not HTTP (${err.message})`
        : `it closed the connection without an answer (${err.message}): its connections are all taken, or it stopped meanwhile`));
    });
  }).finally(socket.release);
}

/**
 * Whether a JSON answer is a status, as every supervisor answers one: another program's HTTP service at the path
 * answers JSON too (`{"status":"ok"}` was taken for a healthy server, exit 0; `null` crashed the command).
 */
function isStatus(answer: unknown): boolean {
  const cluster = (answer as { cluster?: unknown } | null)?.cluster;
  return typeof answer === 'object' && answer !== null && !Array.isArray(answer)
    && typeof cluster === 'object' && cluster !== null && Array.isArray((cluster as { processes?: unknown }).processes);
}

/** The start of a body, printable on a terminal, on one line. */
function shown(body: Buffer): string {
  const start = terminalSafe(body.subarray(0, SHOWN_BYTES)).toString('utf8').trim().replace(/\s*\n\s*/g, ' ');
  return JSON.stringify(body.length > SHOWN_BYTES ? `${start}…` : start);
}
