/**
 * Entry of a child process of the supervisor (`postern serve` with workers): a worker serving the
 * connections the supervisor hands it, or the queue process delivering every worker's spool. Started by
 * fork() with POSTERN_ROLE, POSTERN_WORKER and POSTERN_CONFIG in the environment; talks JSON over the
 * IPC channel (see supervisor.ts and shared-counters.ts for the messages).
 */
import '../app/threadpool.ts';
import '../app/timer-slack.ts';
import { createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { mkdirSync } from 'node:fs';
import { flushCompileCache } from 'node:module';
import { join } from 'node:path';
import { startPostern } from '../app/postern.ts';
import { loadStartConfig } from '../config/start-config.ts';
import { WorkerCounters } from './shared-counters.ts';
import { workerSpoolDir } from './spool-set.ts';
import { DirectoryLockedError } from '../spool/data-dir-lock.ts';
import { createLogger, type LogFormat } from '../logging/logger.ts';
import { ForwardingCounterStore } from './shared-store.ts';
import { storeDependences } from '../admin/store-check.ts';
import { MemoryAuthFailureStore } from '../auth/failure-limiter.ts';
import { runningCall, type RunningCallTable, type RunningScript } from '../sandbox/running-call.ts';
import { typescriptWorker } from './typescript-children.ts';
import { registry } from '../metrics/metrics.ts';
import { HEARTBEAT_MS, HANG_MS, RECYCLE_GRACE_MS, STORE_CALL_MS, crashDir, runningMirror } from './process-model.ts';
import { abandonedRunningScripts, exitMayHang, mustRecycle as mustRecycleNow, onMustRecycle, onUnrecoverable, stuckLoadScripts } from '../sandbox/index.ts';
import { writeCrashRecord } from './crash-record.ts';
import { readFenceList } from './fence-book.ts';
import { turnBufferedStdout } from '../logging/turn-buffered-stdout.ts';
import { Accepting, FileRoom } from './accepting.ts';
import { keepRunning, longestAuthWindow, type RunningSettings } from '../reload/restart-needed.ts';
import { takeOver, type Handoff } from './running-handoff.ts';

/** The queue process hears of new messages at most this late (see the 'spooled' message). */
const ANNOUNCE_BATCH_MS = 100;

const role = process.env.POSTERN_ROLE === 'queue' ? 'queue' : 'worker';
const index = Number(process.env.POSTERN_WORKER ?? 0);
const configPath = process.env.POSTERN_CONFIG || undefined;
const send = (m: object): void => { if (process.connected) process.send!(m); };

type Message = { t?: string; n?: number; reason?: string; listener?: string; policy?: boolean; ids?: string[]; dir?: string; list?: RunningScript[]; key?: string; port?: number; open?: number; total?: number; ip?: string; failures?: number[]; seen?: number };

async function main(): Promise<void> {
  const handoff = takeOver();
  const handedParse = handoff?.handedParse;
  const loaded = loadStartConfig({ configPath, regularFileOnly: true, handed: handedParse });
  // What the server runs with, which the file may no longer say (an edit waiting for a restart): a process started
  // again takes the server's, or it would spool where no queue process looks.
  const runningAs = handoff && withoutParse(handoff);
  if (runningAs) keepRunning(loaded.config, runningAs);
  // Before any script runs: should this process die at once, the supervisor reads what it was running.
  mkdirSync(crashDir(loaded.config.dataDir), { recursive: true, mode: 0o700 }); // the umask may be 000: no one else's
  runningCall.mirrorTo(runningMirror(loaded.config.dataDir, process.pid));
  // The fences as the supervisor saved them, before the first generation loads: a script fenced for crashing
  // its worker while loading must not run its top level again in the replacement (the supervisor's list
  // comes with 'ready', too late for that).
  runningCall.setFenced(readFenceList(crashDir(loaded.config.dataDir)));
  const windowMs = runningAs?.authFailureWindowMs ?? longestAuthWindow(loaded.config);
  // Per-IP slots: by round trip to the supervisor, or alone while it holds the counting lease (shared-counters.ts).
  const counters = new WorkerCounters({ send }, windowMs);
  // store: memory is the supervisor's, shared by every process of the server (shared-store.ts).
  const store = new ForwardingCounterStore({ send, get connected() { return process.connected; } }, STORE_CALL_MS,
    new MemoryAuthFailureStore(counters.failures));
  // Messages can arrive before startup is done (fences, relayed failures): handle those at once.
  let running: Awaited<ReturnType<typeof startPostern>> | null = null;
  const log = createLogger(loaded.config.log.level, undefined, loaded.config.log.format).child({ component: role });
  // Accepting on the listening sockets the supervisor holds, when it says so (workerChoice: fill; accepting.ts).
  const accepting = new Accepting({
    room: fileRoom,
    onConnection: (listener, socket) => (running ? running.acceptOwnConnection(listener, socket) : socket.destroy()), // told only once ready
    onFull() {
      log.warn({ worker: index, openFiles: fileRoom.open, limit: fileRoom.limit },
        `worker ${index} is near its open-file limit: it accepts no new connections until descriptors are free (they wait for another worker, or in the port's queue)`);
      send({ t: 'full' });
    },
    onRoom: () => log.info({ worker: index, openFiles: fileRoom.open, limit: fileRoom.limit }, `worker ${index} has descriptors to spare again: it may accept`),
    onError: (listener, err) => log.error({ listener, err: { message: err.message } }, 'accepting on the listener failed'),
    onListening: (listener) => send({ t: 'listened', listener }), // the supervisor logs `listening` at the first
  });
  const early: Array<[Message, Socket | undefined]> = [];
  process.on('message', (m: Message, handle?: Socket) => {
    // Counted at once: the heartbeat tells the supervisor to close its copies up to here (supervisor.ts).
    if (m.t === 'conn') connectionsGot = m.n ?? connectionsGot;
    if (counters.handle(m as Parameters<WorkerCounters['handle']>[0])) return;
    if (store.handle(m)) return;
    if (m.t === 'fences') return runningCall.setFenced(m.list ?? []);
    if (m.t === 'stop') return void stop();
    if (m.t === 'accept') return handle ? accepting.start(m.listener!, handle as unknown as { close(): void }) : undefined;
    if (m.t === 'listen') return handle ? listenOnce(m.listener!, handle as unknown as { close(): void }) : undefined;
    if (m.t === 'accept-stop') return accepting.stop();
    if (m.t === 'metrics') return void registry.getMetricsAsJSON().then((metrics) => send({ t: 'metrics-r', q: (m as { q?: number }).q, metrics }));
    if (!running) return void early.push([m, handle]);
    dispatch(m, handle);
  });
  // Listening from here on: the supervisor may send what is only useful before this process is ready.
  if (role === 'worker') send({ t: 'hello' });
  const dispatch = (m: Message, handle?: Socket): void => {
    if (m.t === 'conn' && m.policy) { // a policy service's connection: the service's slot (no per-IP one)
      const key = m.key;
      if (key === undefined) return void (handle && running!.acceptPolicyConnection(m.listener!, handle, m.open));
      if (!handle) return counters.giveBack(key); // closed on the way: its slot goes back (told with the next message)
      handle.once('close', () => counters.giveBack(key));
      running!.acceptPolicyConnection(m.listener!, handle, counters.uncounted(key, m.open!, m.seen));
    } else if (m.t === 'conn') {
      if (!handle) return m.key === undefined ? undefined : counters.giveBack(m.key); // closed on the way: its slot goes back
      // Without a key: a PROXY protocol listener's, counted here once its header names the client.
      if (m.key !== undefined) counters.handedOver(m.key, m.port!, m.open!, m.ip!, m.failures ?? [], handle, m.total, m.seen);
      running!.acceptConnection(m.listener!, handle);
    } else if (m.t === 'spooled') {
      // A worker's batch: the first read reopens its journal view, the rest of the batch find it there.
      for (const id of m.ids!) running!.spools.locate(id, m.dir!);
      for (const id of m.ids!) running!.queue!.notify(id);
    } else if (m.t === 'reload') {
      // The supervisor watches the inputs for every process (reload-coordinator.ts) and hears the outcome: a reload
      // does not reject (a failure before the swap is a refusal in the state told, one after it a warning: reloader.ts).
      void running!.reloader.reload(m.reason === 'SIGHUP' ? 'SIGHUP' : 'change').then(tellReloadState, tellReloadState);
    }
  };
  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> => (stopping ??= (async () => {
    accepting.close(); // at once: the port is left to the other workers (or the next server) while sessions end
    // Signalled alone (kill -TERM of this pid), the supervisor would hand on new connections for the whole drain,
    // each greeted and then told 421 Server shutting down. (A recycle said so already with 'draining'.)
    if (!recycling) send({ t: 'stopping' });
    await running?.close({ endsWithSignal: recycling });
    await lastWords();
    end();
  })());
  // The counters as they are at the end, for the supervisor's /metrics (cluster-metrics.ts): what this process
  // counted since the last scrape would otherwise go with it. Sent before the exit (its callback: written to
  // the channel), waited for a few seconds at most.
  const lastWords = async (): Promise<void> => {
    if (!process.connected) return;
    const metrics = await registry.getMetricsAsJSON();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 5000);
      try {
        process.send!({ t: 'metrics-last', metrics }, undefined, {}, () => { clearTimeout(timer); resolve(); });
      } catch {
        clearTimeout(timer);
        resolve();
      }
    });
  };
  // A parked isolate thread keeps process.exit() from returning (unrecoverable.ts): then end with a signal.
  // So does a sync of the spool that the disk has not returned: process.exit() waits for every thread of libuv's pool
  // to end, that one too, and the stop waited for the supervisor's kill 30 s later (no word of why).
  const end = (): void => {
    const unconfirmedMs = running?.runtime.spool.unconfirmedFor() ?? null;
    if (unconfirmedMs !== null) {
      log.warn({ unconfirmedMs: Math.round(unconfirmedMs) }, `${role}${role === 'worker' ? ` ${index}` : ''}: a write of its spool has not returned for ${Math.round(unconfirmedMs / 1000)} s (the disk): ending without waiting for it`);
    }
    if (exitMayHang() || unconfirmedMs !== null) {
      turnBufferedStdout().flushSync(); // this turn's lines: a kill ends it before its flush
      process.kill(process.pid, 'SIGKILL');
    }
    process.exit(0);
  };
  // The sandbox cannot recover in this process: no new connections (the supervisor hands them to the
  // others), the sessions here get their chance to end, then this process ends and is replaced.
  let recycling = false;
  onMustRecycle((reason) => {
    if (recycling) return;
    recycling = true;
    // The scripts abandoned while running made it so: their crash, for the supervisor's fence, as a hang is.
    const scripts = abandonedRunningScripts();
    if (scripts.length && role === 'worker') {
      try {
        writeCrashRecord(crashDir(loaded.config.dataDir), runningMirror(loaded.config.dataDir, process.pid),
          { at: new Date().toISOString(), pid: process.pid, worker: index, reason: 'unrecoverable', scripts });
      } catch { /* a full disk: the replacement matters more than the record */ }
    }
    send({ t: 'draining', reason, scripts });
    setTimeout(() => process.kill(process.pid, 'SIGKILL'), RECYCLE_GRACE_MS).unref();
    void stop();
  });
  // A thread parked by a top level that could not be stopped while loading (a reload, refused): the running
  // generation serves on, and this process is not emptied for it (a replacement would load that same file).
  onUnrecoverable((reason) => {
    const loads = stuckLoadScripts();
    if (recycling || mustRecycleNow() || !loads.length) return;
    log.error({ [role]: index, reason, scripts: loads },
      `${role} ${index} serves on with its running scripts: the isolate that cannot recover was loading ${loads.map((s) => s.file).join(', ')} (refused); ` +
      'that source is not run again in this process until the file changes');
  });
  // The supervisor went away: so do we (its sockets are gone; nothing would reach us).
  process.on('disconnect', () => void stop());
  // A message sent after the supervisor died but before 'disconnect' is read (a heartbeat) fails with EPIPE,
  // reported as an 'error' event that would end this process at once, sessions mid-transaction included.
  process.on('error', () => undefined);
  // Ctrl-C and service managers signal the whole process group: stop cleanly like a single process. Kept
  // (stop() runs once): a second signal must not end the process in the middle of its stop.
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
  // Ctrl-\ signals the group: Node's default for SIGQUIT ended this process at once (sessions cut, taken for a crash).
  process.on('SIGQUIT', () => void stop());
  // SIGHUP to the whole process group reaches the supervisor too, which tells every child once: a child
  // reloading on its own signal as well would reload twice.
  process.on('SIGHUP', () => undefined);
  // Log rotation's signals, sent to the group: nothing to reopen, and no inspector (--disable-sigusr1 in
  // childExecArgv already), nor an end of the process (SIGUSR2's default). The supervisor logs them.
  process.on('SIGUSR1', () => undefined);
  process.on('SIGUSR2', () => undefined);

  // New messages are told to the queue process in batches (one IPC message per batch, not per message).
  let spooled: string[] = [];
  const announce = (dir: string): void => {
    send({ t: 'spooled', dir, ids: spooled });
    spooled = [];
  };
  running = await startOnceSpoolIsFree(loaded.config, {
    configPath, regularFileOnly: true, handed: handedParse, role, workerIndex: index, counters, memoryStore: store, running: runningAs,
    // The supervisor holds the data directory's lock; each child locks the spool it writes. A child of a
    // supervisor that died lets its sessions finish: a new server's child must not open that spool meanwhile
    // (it would delete segments and files it takes for a crash's leftovers): this one waits for it.
    lockDir: role === 'queue' ? join(loaded.config.dataDir, 'spool') : workerSpoolDir(loaded.config.dataDir, index),
    onSpooled(id, dir) {
      if (spooled.length === 0) setTimeout(announce, ANNOUNCE_BATCH_MS, dir);
      spooled.push(id);
    },
    // The queue process: spools of workers beyond these are written by none (spool-set.ts reports their damage).
    workers: Number(process.env.POSTERN_WORKERS),
  });
  tellReloadState = (): void => send({ t: 'reload-state', state: running!.reloader.state() });
  running.reloader.onReload(tellReloadState); // a coalesced reload after the one asked for, too
  // With each heartbeat: near the open-file limit, accepting on the supervisor's sockets (it was told to, and the
  // sockets came), and while its Redis store is unreachable what that refuses (the supervisor's /readyz).
  const { store: counterStore, runtime } = running;
  startWatchdog(loaded.config, counters, () => (role === 'worker' ? {
    ...(accepting.recount() ? { full: true } : {}), ...(accepting.accepting ? { accepting: true } : {}),
    ...(counterStore.unreachable ? { store: storeDependences(runtime.generation.config.listeners) } : {}),
    // A sync of its spool past its deadline, not returned: how long (ms), for the supervisor's /readyz.
    ...unconfirmedBeat(runtime.spool.unconfirmedFor()),
  } : {
    // The queue process accepts no connections: a write of its spools past the deadline (a delivery state, a
    // removal, a bounce's) alone. Without it in its beat, its hung writes never reached /readyz.
    ...unconfirmedBeat(runtime.spool.unconfirmedFor()),
  }));
  for (const [m, h] of early.splice(0)) dispatch(m, h);
  send({ t: 'ready' });
  tellReloadState();
  // The code compiled for this process, kept now for a replacement's start (bin/compile-cache.js; Node writes it only
  // at a clean exit otherwise, which a worker killed as hung never has). Nothing when no cache is enabled.
  flushCompileCache();
}

let tellReloadState: () => void = () => undefined;

/** The running settings of what the supervisor handed over, without its parse of postern.yaml. */
function withoutParse({ handedParse: _, ...running }: Handoff): RunningSettings {
  return running;
}

const unconfirmedBeat = (ms: number | null): { spoolUnconfirmedMs?: number } => (ms === null ? {} : { spoolUnconfirmedMs: ms });

/**
 * Make a listener's socket the supervisor holds listen, without accepting on it: listen() and close this
 * process's copy in the same turn (libuv accepts only in a later one). The socket, open in the supervisor,
 * stays listening: from the server's start, connections wait in its queue until the first worker accepts
 * instead of being refused (held-socket.ts).
 */
function listenOnce(listener: string, handle: { close(): void }): void {
  const server = createServer();
  server.on('error', () => undefined); // the next worker's (or the first accepting worker's) listen tries again
  server.listen(handle as unknown as Server);
  const listened = server.listening;
  server.close();
  if (listened) send({ t: 'listened', listener });
}
/** This process's descriptors against its limit (accepting.ts), counted at each heartbeat. */
const fileRoom = new FileRoom();
/** The number of the last connection the supervisor handed over (its descriptor is ours now). */
let connectionsGot = 0;

/** How long a child waits for the process of an earlier server to finish with its spool (below the supervisor's STARTUP_MS). */
const SPOOL_WAIT_MS = 100_000;

/**
 * startPostern, once the spool it locks is free: a child of an earlier server (its supervisor killed and
 * the service restarted) may still be finishing its sessions or deliveries there.
 */
async function startOnceSpoolIsFree(config: { dataDir: string; log: { level: string; format: LogFormat } }, opts: Parameters<typeof startPostern>[0]): Promise<Awaited<ReturnType<typeof startPostern>>> {
  const deadline = performance.now() + SPOOL_WAIT_MS;
  let told = false;
  for (;;) {
    try {
      return await startPostern(opts);
    } catch (err) {
      if (!(err instanceof DirectoryLockedError) || performance.now() > deadline) throw err;
      if (!told) {
        told = true;
        createLogger(config.log.level, undefined, config.log.format).child({ component: role })
          .warn({ holder: err.pid, lockFile: err.lockFile }, `waiting for process ${err.pid}, of an earlier server, to finish with its spool (${err.lockFile})`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** How long after a failure of the watchdog thread another is started. */
const WATCHDOG_RETRY_MS = 1000;

/** Heartbeats: to the supervisor over IPC, and to this process's watchdog thread through shared memory. */
function startWatchdog(config: { dataDir: string; log: { level: string; format: LogFormat } }, counters: WorkerCounters, facts: () => object): void {
  const dataDir = config.dataDir;
  const workerData = {
    marker: runningCall.buffer, heartbeat: runningCall.heartbeatBuffer, crashDir: crashDir(dataDir), worker: index, role, hangMs: HANG_MS,
    mirror: runningMirror(dataDir, process.pid), logBuffer: turnBufferedStdout().shared,
  };
  let table: RunningCallTable = {};
  let watchdog: ReturnType<typeof typescriptWorker> | null = null;
  // A thread that fails (out of file descriptors while it loads, say) emits 'error', which without a listener
  // ended this process and its sessions: logged and started again; the supervisor's hang check covers the gap.
  const start = (): void => {
    const thread = typescriptWorker(new URL('./watchdog-thread.ts', import.meta.url), { workerData, name: 'watchdog' }); // named: `top -H`, tests
    thread.unref();
    thread.on('error', (err: Error) => {
      if (watchdog === thread) watchdog = null;
      createLogger(config.log.level, undefined, config.log.format).child({ component: role })
        .error({ err: { message: err.message } }, `${role} ${index}: its watchdog thread failed (${err.message}); another starts in ${WATCHDOG_RETRY_MS} ms`);
      setTimeout(start, WATCHDOG_RETRY_MS).unref();
    });
    thread.postMessage(table);
    watchdog = thread;
  };
  start();
  // The table goes over while the main thread can still send it: a stuck one cannot answer.
  runningCall.subscribe((t) => {
    table = t;
    watchdog?.postMessage(t);
  });
  // With the event loop's utilisation since the last beat: the supervisor fills one worker before the next.
  // And how much of that interval this thread was on a CPU: busy but waiting for one is contention, not saturation.
  let loop = performance.eventLoopUtilization();
  let thread = process.threadCpuUsage();
  let at = performance.now();
  setInterval(() => {
    runningCall.beat();
    const now = performance.eventLoopUtilization();
    const elu = performance.eventLoopUtilization(now, loop).utilization;
    loop = now;
    const threadNow = process.threadCpuUsage();
    const atNow = performance.now();
    const cpu = (threadNow.user - thread.user + threadNow.system - thread.system) / 1000 / Math.max(1, atNow - at);
    thread = threadNow;
    at = atNow;
    counters.flush(); // slots given back since the last message
    send({ t: 'hb', got: connectionsGot, elu: Math.round(elu * 1000) / 1000, cpu: Math.round(cpu * 1000) / 1000, ...facts() });
  }, HEARTBEAT_MS).unref();
}

main().catch((err: unknown) => {
  process.stderr.write(`postern ${role} ${index}: ${(err as Error).stack ?? String(err)}\n`);
  if (!exitMayHang()) process.exit(1);
  // Its start failed on a script that could not be stopped (a top level stuck in a builtin, in the file on disk):
  // blamed, so that the supervisor fences it after repeated starts instead of starting into it for ever; and ended
  // with a signal, as process.exit() would hang or crash on the parked thread.
  const scripts = [...stuckLoadScripts(), ...abandonedRunningScripts()];
  if (scripts.length) {
    try {
      const dataDir = loadStartConfig({ configPath, regularFileOnly: true }).config.dataDir;
      writeCrashRecord(crashDir(dataDir), runningMirror(dataDir, process.pid),
        { at: new Date().toISOString(), pid: process.pid, worker: index, reason: 'unrecoverable', scripts });
    } catch { /* the replacement matters more than the record */ }
  }
  process.kill(process.pid, 'SIGKILL');
});
