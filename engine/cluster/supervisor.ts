/**
 * The supervisor of the multi-process model: a small process that runs no script. It owns the listening
 * sockets, hands each accepted connection to a worker process, replaces workers that die (with back-off)
 * or stop answering, hosts the counters limits need summed over workers (shared-counters.ts), keeps the
 * fence list (fence-book.ts) and writes <dataDir>/cluster.json for `postern status`.
 *
 * Who accepts. With `workerChoice: fill` (the default) the supervisor holds each SMTP listener's socket
 * (held-socket.ts) and the workers accept on it themselves, as Postfix's smtpd processes accept on the
 * sockets its master holds: the supervisor only decides which workers accept at all (the first, the next
 * ones while those before are busy: worker-choice.ts), at each heartbeat, and takes each connection's
 * per-IP slot by round trip ('conn+', shared-counters.ts) — but while one worker alone accepts, that worker
 * holds the counting lease and counts alone; another worker is told to accept only once the lease has ended
 * (the holder's table merged here, or the holder dead). Handing every connection over cost the
 * supervisor about 110–150 µs of CPU per connection (docs/benchmarks.md). With `roundRobin`, and for
 * policy services, the supervisor accepts and passes each socket itself (like node:cluster's round-robin
 * mode). Rather than workers each binding the port with SO_REUSEPORT: the kernel would keep queueing new
 * connections on a hung worker's socket until it is killed, and node:cluster's primary closes the port when
 * its last worker is gone (workers: 1 would refuse connections during every restart). Either way the port
 * stays open whatever the workers do: the socket is the supervisor's, and a connection waits in the kernel's
 * queue (or here) while no worker can take it; a hung worker accepts nothing, and once its heartbeat is
 * late the next worker accepts instead (if the hung one held the counting lease: once it was killed).
 */
import { ReadableSecretsReport } from '../config/readable-secrets.ts';
import { fork, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { availableParallelism } from 'node:os';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import { ClusterMetrics } from '../metrics/cluster-metrics.ts';
import { adminLimits, startAdminServer, type AdminServer, type AdminTarget, type ReadinessCheck } from '../admin/admin-server.ts';
import { spoolConfirmsWrites, spoolWritable } from '../admin/spool-check.ts';
import { metrics, registry, setAuthFailureProbe, setFenceProbe, setQueueProbe } from '../metrics/metrics.ts';
import { shadowCounts } from '../shadow/shadow-status.ts';
import { fileURLToPath } from 'node:url';
import type { LoadedConfig } from '../config/load-config.ts';
import type { Config } from '../config/schema.ts';
import { loadStartConfig } from '../config/start-config.ts';
import { GenerationError, policySocketLines } from '../generation/generation-error.ts';
import { dataDirError } from '../config/data-dir-check.ts';
import { createLogger, type Logger } from '../logging/logger.ts';
import { CounterHost } from './shared-counters.ts';
import { WaitingCounts } from './waiting-counts.ts';
import { acquireDirectoryLock, openToOthers, openToOthersWarning, type DirectoryLock } from '../spool/data-dir-lock.ts';
import { lockEvenWhenFull, reservePath } from '../spool/reserve.ts';
import { removeLeftoverTemporaries, writeFileAtomic } from '../spool/fsync.ts';
import { childExecArgv } from './typescript-children.ts';
import { CHILD_STDIO, handOver, RUNNING_ENV } from './running-handoff.ts';
import { parseToHand, type HandedParse } from '../config/handed-parse.ts';
import { longestAuthWindow, restartNeeded, runningSettings } from '../reload/restart-needed.ts';
import { Spool } from '../spool/spool.ts';
import { SpoolSet, type QueueCensus } from './spool-set.ts';
import { statusSummary } from './status-summary.ts';
import { clientAddress } from '../addresses/socket-address.ts';
import { closedUnansweredCounted } from '../smtp/connection-refusals.ts';
import { countedAddress } from '../connection-limits/counted-address.ts';
import { FenceBook, type CrashRecord, type Fence } from './fence-book.ts';
import { ReloadCoordinator, type ChildReloadState } from './reload-coordinator.ts';
import { POLL_MS } from '../reload/change-watcher.ts';
import { StoreHost } from './shared-store.ts';
import { reloadCheck } from '../admin/reload-check.ts';
import { storeCheckOf } from '../admin/store-check.ts';
import { createMemoryStore } from '../store/index.ts';
import { TrustedProxies, UNTRUSTED_PROXY_REASON } from '../proxy-protocol/trusted-proxies.ts';
import { RestartBackoff } from './restart-backoff.ts';
import { acceptingCount, chooseWorker, cpuSample, spareCores, type CpuSample } from './worker-choice.ts';
import { FileRoom } from './accepting.ts';
import { holdSocket, type HeldSocket } from './held-socket.ts';
import { lockHolder } from '../spool/data-dir-lock.ts';
import { listenPolicyService, policyConnectionKey, type BoundPolicyService } from '../policy-service/listen.ts';
import { BUSY_WITHOUT_TIMERS_MS, ThreadProgress, heldStill } from './thread-progress.ts';
import { SilenceClock } from './silence-clock.ts';
import { silenceBlamesEventLoop, type Silenced } from './silence-blame.ts';
import { unreadableChildMessage } from './child-messages.ts';
import { SUPERVISOR_HANG_MS, TAKE_MS, RECYCLE_GRACE_MS, STALE_FOR_CONNECTIONS_MS, HEARTBEAT_MS, STARTUP_MS, LOCK_CHECK_MS, crashDir, clusterStatusFile, statusSocket, runningMirror } from './process-model.ts';
import { readMirror, removeMirror, type RunningScript } from '../sandbox/running-call.ts';
import { existsSync, lstatSync, readdirSync, rmSync } from 'node:fs';
import { privilegedPortHint } from '../config/privileged-ports.ts';

/**
 * Connections handed to one worker and still queued in Node's channel. Node passes one descriptor per
 * round trip (the next is written once the worker's own acknowledgement of the previous came back); a few
 * queued keep a busy worker's queue full, and a worker that hangs takes at most this many plus the one
 * written to it (it gets none once its heartbeat is STALE_FOR_CONNECTIONS_MS old).
 */
const MAX_INFLIGHT = 3;
/** Accepted connections waiting for a worker beyond this many are dropped. */
const MAX_WAITING = 10_000;
/** The supervisor keeps its copy of a handed-over socket until the worker's heartbeat counts it (#got). */
const KEEP_OPEN = { keepOpen: true } as const;
const CHILD_ENTRY = fileURLToPath(new URL('./child-entry.ts', import.meta.url));

interface Child {
  kind: 'worker' | 'queue';
  index: number;
  proc: ChildProcess | null;
  ready: boolean;
  /** When it was last heard from, on the monotonic clock (a wall-clock step must not look like silence). */
  lastBeat: number;
  /**
   * While it is silent: its main thread's read and write calls (a busy poll is no hang), and its silence since the last
   * beat or call, less the time the main thread waited for a CPU (silence-clock.ts: a loaded host is no hang either).
   */
  progress: ThreadProgress | null;
  silence: SilenceClock | null;
  /** That silence, as counted at the last tick. */
  silentRanMs: number;
  /** Connections handed over whose descriptor Node has not yet written to the worker's channel. */
  inflight: Set<net.Socket>;
  /**
   * Connections written to the worker, by hand-over number, oldest first. The supervisor keeps its copy of
   * each until the worker's heartbeat says it got that number (Node would keep it too with keepOpen: false,
   * and never close it if the worker died before acknowledging: the client would wait for a greeting that
   * never comes); the count rides on the heartbeat, so a hand-over costs no message of ours. (A worker ends
   * sessions with a shutdown, which the client sees at once; one it destroys without is closed for the
   * client when this copy is too, at most a heartbeat later.)
   */
  copies: Array<{ n: number; socket: net.Socket }>;
  /** Hand-overs to this process so far, and the last number its heartbeat said it got. */
  handed: number;
  got: number;
  /** Event-loop utilisation over its last heartbeat interval, its thread's share on a CPU, and connections handed to it since (worker-choice.ts). */
  elu: number;
  cpu: number;
  fresh: number;
  /** Since when (monotonic) handed-over connections (or the listening sockets) have waited without the worker taking one; null when none wait. */
  takingSince: number | null;
  /** Told to accept, and its heartbeat has not said it does yet (the sockets' descriptors are on their way). */
  acceptPending: boolean;
  /** Told to accept on the held listening sockets (workerChoice: fill), and how many times it was told so. */
  accepting: boolean;
  acceptTurns: number;
  /** Told to stop accepting, and no heartbeat since has said it stopped: it may still take slots of connections it accepted. */
  stopPending: boolean;
  /** Its heartbeat says it is near its open-file limit: it accepts nothing until descriptors are free (child.ts). */
  full: boolean;
  /** Its heartbeat says its Redis store is unreachable, with what that refuses on each listener (store-check.ts); null: reachable. */
  storeDown: Record<string, string[]> | null;
  /** How long a sync of its spool had been past its deadline without returning, at its last heartbeat; null: none. */
  spoolUnconfirmedMs: number | null;
  startedAt: number;
  restarts: number;
  lastExit: string | null;
  /** It said it is stopping on purpose ('stopping': signalled; 'draining': recycled), so a clean exit is no death. */
  stopAnnounced: 'signalled' | 'recycled' | null;
  backoff: RestartBackoff;
  restartTimer: NodeJS.Timeout | null;
  /**
   * The process this supervisor killed for its silence (its pid), and whether it was held still then (stopped by a
   * signal or a debugger): what its death says about the scripts it ran differs from a crash's (see #blamed).
   */
  silenced: ({ pid: number } & Silenced) | null;
}

/** Older releases wrote cluster.json and status.json through `<name>.<pid>.tmp`: a kill -9 left one for good. */
const OLDER_STATUS_TEMPORARY = /^(?:cluster|status)\.json\.(\d+)\.tmp$/;

export interface SupervisorOptions {
  configPath?: string;
  /**
   * Aborted by a stop signal that comes while the server starts: the start ends at once with StartStopped,
   * everything started stopped (a child waiting for an earlier server's spool could keep it waiting 100 s).
   */
  stop?: AbortSignal;
  prepare?(config: LoadedConfig): Promise<void>;
  logger?: Logger;
}

/** The start was ended by a stop signal (SupervisorOptions.stop): not a failure. */
export class StartStopped extends Error {
  constructor() {
    super('stopped while starting');
  }
}

/** What only a restart of `postern serve` applies: a single process's list, and the process model's own keys. */
export function serveRestartNeeded(running: Config, next: Config): string[] {
  const out = restartNeeded(running, next);
  if (workerCount(next.workers) !== workerCount(running.workers)) out.push(`workers ${running.workers} → ${next.workers}`);
  if (next.workerChoice !== running.workerChoice) out.push(`workerChoice ${running.workerChoice} → ${next.workerChoice}`);
  return out;
}

export function workerCount(setting: number | 'auto'): number {
  return setting === 'auto' ? availableParallelism() : setting;
}

export class Supervisor {
  readonly config: LoadedConfig;
  readonly log: Logger;
  readonly addresses = new Map<string, { address: string; port: number }>();
  /** Where each Postfix policy service listens: `address:port` or `unix:/path`. */
  readonly policyAddresses = new Map<string, string>();
  readonly #configPath: string | undefined;
  readonly #listeners: net.Server[] = [];
  /** The SMTP listeners' sockets the workers accept on (workerChoice: fill), by listener name. */
  readonly #held = new Map<string, HeldSocket>();
  /** Every held socket listens (a worker made it): from then on they queue connections whatever the workers do. */
  #heldListening = false;
  /** The held sockets that listen, by listener name. */
  readonly #listening = new Set<string>();
  readonly #policyListeners: BoundPolicyService[] = [];
  /** Each unix policy socket's inode as bound, by service name (#keepPolicySockets). */
  readonly #policySocketIno = new Map<string, number>();
  /** Services whose socket's path holds something else now: said once, until it is ours again. */
  readonly #policySocketSaid = new Set<string>();
  #policySocketsChecking = false;
  readonly #children: Child[] = [];
  /** `key` and `ip`: a counted SMTP connection's slot and client (not for PROXY or policy connections). */
  readonly #waiting: Array<{ listener: string; socket: net.Socket; policy: boolean; proxied: boolean; key?: string; ip?: string }> = [];
  readonly #waitingCounts = new WaitingCounts();
  /** Client slots (and listeners, by name) refused at accept, until they come back under: logged once per episode. */
  readonly #floodReported = new Set<string>();
  /** The waiting queue was full (MAX_WAITING) at an accept: logged once until one is accepted again. */
  #waitingFullReported = false;
  /**
   * Its own descriptors against its open-file limit, counted at each heartbeat as a worker counts its (accepting.ts).
   * Each connection waiting for a worker holds one; at EMFILE libuv would accept and close every connection queued on
   * the port without Node ever saying so, and its own files (cluster.json, the lock, the status socket) would find
   * none. Near the limit it closes what it accepts itself, counted and said once (#noteFileRoom).
   */
  readonly #fileRoom = new FileRoom();
  #fileRoomFullReported = false;
  readonly #counters: CounterHost;
  readonly #fences: FenceBook;
  readonly #reloads: ReloadCoordinator;
  /**
   * The configuration every child runs, once a reload is in force everywhere (null: the one started with). What the
   * supervisor judges by itself of the keys a reload changes comes from it: the listeners' and policy services' limits
   * at accept, the spool's floors of /readyz and `postern status` (with the start's, a raised spool.minFreeBytes had the
   * workers refuse mail while the server said it was ready). The keys only a restart applies stay the start's.
   */
  #inForce: Config | null = null;
  /** `store:` memory for every child (with `store.redis` the children go to Redis themselves). */
  readonly #store: StoreHost;
  #next = 0;
  /** The machine's idle CPU in cores over the last tick, from these samples (worker-choice.ts). */
  #spare = 0;
  #cpus: CpuSample | null = null;
  #timer: NodeJS.Timeout | null = null;
  /** The tick to come in the check phase, once the poll phase has read the children's heartbeats. */
  #tickLook: NodeJS.Immediate | null = null;
  /** The choice of accepting workers to come in the check phase (#chooseAccepting). */
  #choiceLook: NodeJS.Immediate | null = null;
  #fenceTimer: NodeJS.Timeout | null = null;
  #stopping = false;
  #lock: DirectoryLock | null = null;
  /** The lock's last state, to log each change once (see #keepLock). */
  #lockState = 'held';
  #lockTimer: NodeJS.Timeout | null = null;
  #admin: AdminServer | null = null;
  #statusServer: AdminServer | null = null;
  /** The inode of the status socket bound, to tell it from a file put in its place (#keepStatusSocket). */
  #statusSocketIno: number | null = null;
  #statusSocketRemaking = false;
  #statusSocketFailed = false;
  /** Metrics requests waiting for children's answers, by request number. */
  readonly #metricsWaiting = new Map<number, (metrics: MetricObjectWithValues<MetricValue<string>>[] | null) => void>();
  #metricsNext = 0;
  /** The children's last metrics, and those of children that exited: the server's counters never go down. */
  readonly #clusterMetrics = new ClusterMetrics();
  /** Children being replaced for a message the supervisor could not read (#fromChild): said once each. */
  readonly #misspoke = new WeakSet<ChildProcess>();
  #saving: Promise<void> = Promise.resolve();
  /** Until every child was ready once: a child that fails before that fails the start. */
  #firstStart: { resolve(): void; reject(err: Error): void } | null = null;
  readonly #startedAt = new Date().toISOString();
  /** postern.yaml as parsed at start, for each child to take when the file still holds that text (handed-parse.ts). */
  readonly #handedParse: HandedParse | undefined;

  /** `root`: the logger `log` is a child of (the reload lines are component `reload`, not also `supervisor`). */
  private constructor(config: LoadedConfig, configPath: string | undefined, log: Logger, root: Logger) {
    this.config = config;
    this.#handedParse = parseToHand(config);
    this.#configPath = configPath;
    this.log = log;
    this.#store = new StoreHost(createMemoryStore(config.config.store, log));
    this.#counters = new CounterHost(longestAuthWindow(config.config), {
      sendTo: (index, m) => {
        const worker = this.#children.find((c) => c.kind === 'worker' && c.index === index);
        if (worker?.proc?.connected) worker.proc.send(m);
      },
      // The holder's slots are counted here (or it died): the workers waiting to accept may now.
      onLeaseFree: () => {
        this.#chooseAccepting();
        void this.#saveStatus();
      },
    });
    this.#fences = new FenceBook(crashDir(config.config.dataDir), (err) =>
      log.error({ err: { message: (err as Error).message } }, 'the fence list could not be written; the fences hold in memory until restart'),
    (message) => log.error(message));
    setFenceProbe(() => this.#fences.fences.length);
    setAuthFailureProbe(() => this.#counters.failureAddresses);
    // The queue gauges are read here, from the spools (as postern status does): read by the queue process, they
    // fell to 0 whenever it was down (crashed, being replaced), and the queue alerts cleared when mail was stuck.
    setQueueProbe(() => this.#census());
    // Once per server, not per worker; at a reload only what is new (or an hour old: ReadableSecretsReport).
    const readableSecrets = new ReadableSecretsReport();
    this.#reloads = new ReloadCoordinator(config, configPath, root, (reason) => {
      for (const c of this.#children) if (c.ready && c.proc?.connected) c.proc.send({ t: 'reload', reason });
    }, () => this.#pendingRestart(), (loaded) => {
      this.#inForce = loaded.config;
      // At start (the first content every process runs) and at each reload in force everywhere.
      readableSecrets.say(loaded, log);
      void this.#saveStatus();
    }, () => void this.#saveStatus());
    // Mirrors left by the children of a server that ended without cleaning up (this one holds the lock now).
    for (const name of readdirSync(crashDir(config.config.dataDir))) {
      if (name.startsWith('running-')) rmSync(join(crashDir(config.config.dataDir), name), { force: true });
    }
  }

  static async start(opts: SupervisorOptions): Promise<Supervisor> {
    // A regular file only, as every process of the server and every reload reads it again: from a pipe
    // (`--config <(generate)`) the workers found it gone and the first of them died with the reason.
    const loaded = loadStartConfig({ configPath: opts.configPath, regularFileOnly: true });
    const root = opts.logger ?? createLogger(loaded.config.log.level, undefined, loaded.config.log.format);
    const log = root.child({ component: 'supervisor' });
    // Refused as `postern check` refuses it, before anything is locked or written there.
    const unusable = await dataDirError(loaded, { starting: true });
    if (unusable) throw unusable;
    // One server per data directory; the children run under this lock (they start with lockDir: false).
    const { lock, released } = lockEvenWhenFull(loaded.config.dataDir, loaded.config.dataDir);
    if (released) log.error({ reserve: reservePath(loaded.config.dataDir) }, 'spool: the disk is full: the reserve is released so that the server could start; new mail is refused (452 4.3.1) until there is room again');
    const open = openToOthers(loaded.config.dataDir);
    if (open) log.warn({ dataDir: loaded.config.dataDir }, openToOthersWarning(loaded.config.dataDir, open));
    // A crash record or fence list cut short by a kill is only ever a temporary file (written whole): gone with its writer.
    await removeLeftoverTemporaries(crashDir(loaded.config.dataDir));
    await removeLeftoverTemporaries(loaded.config.dataDir, OLDER_STATUS_TEMPORARY); // cluster.json's and status.json's
    const sup = new Supervisor(loaded, opts.configPath, log, root);
    sup.#lock = lock;
    try {
      await opts.prepare?.(loaded);
      // Refused as `postern check` refuses it, before binding anything (the children build the rest).
      const sockets = await policySocketLines(loaded);
      if (sockets.length) throw new GenerationError(loaded.file, sockets);
      await sup.#listen();
    } catch (err) {
      lock.release();
      throw err;
    }
    const n = workerCount(loaded.config.workers);
    for (let i = 0; i < n; i++) sup.#children.push(sup.#newChild('worker', i));
    sup.#children.push(sup.#newChild('queue', 0));
    // Each role's series exists from the start, at 0: Prometheus' increase() cannot count a series' first
    // sample, so without it a fresh server's first restarts would be invisible to the restart alert.
    for (const role of ['worker', 'queue'] as const) metrics.processRestarts.inc({ role }, 0);
    const started = new Promise<void>((resolve, reject) => { sup.#firstStart = { resolve, reject }; });
    // A stop signal now ends the start (a child's death it causes is no failure to start: the first to settle wins).
    const stopAsked = (): void => {
      sup.#firstStart?.reject(new StartStopped());
      sup.#firstStart = null;
    };
    if (opts.stop?.aborted) stopAsked();
    opts.stop?.addEventListener('abort', stopAsked, { once: true });
    try {
      await sup.#reloads.start(); // watching before the children read their inputs
      for (const c of sup.#children) sup.#spawn(c);
      // The tick judges the children's heartbeats: after the sockets are read (their channels), not in the timer. A
      // supervisor that got the CPU back late runs its timers first, and beats waiting unread made every worker look
      // stale: the accepting one was told to stop, then, once they were read, to accept again.
      sup.#timer = setInterval(() => { sup.#tickLook ??= setImmediate(() => { sup.#tickLook = null; sup.#tick(); }); }, HEARTBEAT_MS);
      sup.#lockTimer = setInterval(() => { sup.#keepLock(); void sup.#keepStatusSocket(); void sup.#keepPolicySockets(); }, LOCK_CHECK_MS);
      sup.#lockTimer.unref();
      await started; // a configuration or script error stops `serve` at once, as in one process
      await sup.#saveStatus();
      // `postern status` asks here, with or without an admin listener.
      const socket = statusSocket(loaded.config.dataDir);
      try {
        sup.#statusServer = await startAdminServer(`unix:${socket}`, sup.#adminTarget());
        sup.#statusSocketIno = lstatSync(socket).ino;
      } catch (err) {
        log.warn({ socket, err: { message: (err as Error).message } }, 'status socket not made: postern status cannot ask this server (the admin listener still answers /status)');
      }
      if (loaded.config.admin) {
        sup.#admin = await startAdminServer(loaded.config.admin.listen, sup.#adminTarget(), adminLimits(loaded.config.admin, log, () => (sup.#inForce ?? loaded.config).hostname));
        log.info({ address: `${sup.#admin.address.address}:${sup.#admin.address.port}` }, 'admin listener: /metrics /healthz /readyz /status');
      }
    } catch (err) {
      // The children stopped (not left to notice the supervisor's exit), the status socket closed, the lock given back.
      await sup.stop();
      throw err;
    } finally {
      opts.stop?.removeEventListener('abort', stopAsked);
    }
    // Last: "started" means every part answers, the status socket and admin listener included.
    log.info({ workers: n }, 'supervisor started');
    return sup;
  }

  async #listen(): Promise<void> {
    const workersAccept = this.config.config.workerChoice === 'fill';
    for (const l of this.config.config.listeners) {
      const sep = l.listen.lastIndexOf(':');
      const host = l.listen.slice(0, sep).replace(/^\[|\]$/g, '');
      const port = Number(l.listen.slice(sep + 1));
      if (workersAccept) {
        const held = await holdSocket(host, port, () => this.#earlierServerChild()).catch((err: Error) => {
          throw new Error(`listener ${l.name}: cannot listen on ${l.listen}: ${err.message}${privilegedPortHint(l.listen, err)}`);
        });
        this.#held.set(l.name, held);
        this.addresses.set(l.name, { address: held.address, port: held.port });
        // 'listening' is logged once a worker has made it listen (the 'listened' message): until then it refuses.
        this.log.debug({ listener: l.name, address: `${held.address}:${held.port}` }, 'bound');
        continue;
      }
      // Paused: the supervisor never reads a byte; the worker that gets the socket does.
      const proxy = l.proxyProtocol ? new TrustedProxies(l.proxyProtocol.trusted) : null;
      const server = net.createServer({ pauseOnConnect: true }, (socket) => this.#accepted(l.name, socket, proxy));
      await new Promise<void>((resolve, reject) => {
        server.once('error', (err) => reject(new Error(`listener ${l.name}: cannot listen on ${l.listen}: ${err.message}${privilegedPortHint(l.listen, err)}`)));
        server.listen(port, host, () => resolve());
      });
      server.on('error', (err) => this.log.error({ listener: l.name, err }, 'listener error'));
      const bound = server.address() as net.AddressInfo;
      this.addresses.set(l.name, { address: bound.address, port: bound.port });
      this.#listeners.push(server);
      this.log.info({ listener: l.name, address: `${bound.address}:${bound.port}`, tls: l.tls.mode }, 'listening');
    }
    // Policy services are served by the workers too, connection by connection like SMTP: a Postfix smtpd
    // keeps its connection for many requests, so spreading connections spreads the load, and a worker that
    // dies takes only its own connections (Postfix reconnects, and meanwhile applies its default_action).
    for (const p of this.config.config.policyServices) {
      const bound = await this.#listenPolicy(p);
      this.policyAddresses.set(p.name, bound.address);
      this.#policyListeners.push(bound);
      this.log.info({ policyService: p.name, address: bound.address }, 'policy service listening');
    }
  }

  /** A policy service bound (its unix socket with its mode and owner), its inode noted for #keepPolicySockets. */
  async #listenPolicy(p: Config['policyServices'][number]): Promise<BoundPolicyService> {
    const server = net.createServer({ pauseOnConnect: true }, (socket) => this.#accepted(p.name, socket, null, true));
    const bound = await listenPolicyService(p, server);
    server.on('error', (err) => this.log.error({ policyService: p.name, err }, 'policy service error'));
    if (p.listen.startsWith('unix:')) this.#policySocketIno.set(p.name, lstatSync(p.listen.slice(5)).ino);
    return bound;
  }

  /**
   * A unix policy socket removed while the server runs (a cleanup of its folder, a careless `rm`) is made again, with
   * its mode and owner: Postfix found nothing to connect to and applied its default_action to every message until a
   * restart (a reload binds nothing). Checked with the lock, every LOCK_CHECK_MS. Something else at its path (another
   * socket, a file) is left alone, as a start leaves it, and said once.
   */
  async #keepPolicySockets(): Promise<void> {
    if (this.#policySocketsChecking || this.#stopping) return;
    this.#policySocketsChecking = true;
    try {
      for (const [i, p] of this.config.config.policyServices.entries()) {
        const old = this.#policyListeners[i];
        if (!old || !p.listen.startsWith('unix:')) continue;
        const path = p.listen.slice(5);
        const found = lstatSync(path, { throwIfNoEntry: false });
        if (found?.isSocket() && found.ino === this.#policySocketIno.get(p.name)) {
          this.#policySocketSaid.delete(p.name);
          continue;
        }
        if (found) {
          if (!this.#policySocketSaid.has(p.name)) this.log.error({ policyService: p.name, socket: path }, 'policy service: its socket file was replaced while the server ran by something else, left alone: Postfix reaches this service again once that is removed');
          this.#policySocketSaid.add(p.name);
          continue;
        }
        // Not waited for (see stop()). Its close removes the socket file only while it is its own (listenPolicyService).
        old.close();
        try {
          const bound = await this.#listenPolicy(p);
          if (this.#stopping) {
            bound.close();
            return;
          }
          this.#policyListeners[i] = bound;
          this.#policySocketSaid.delete(p.name);
          this.log.error({ policyService: p.name, socket: path }, 'policy service: its socket file was removed while the server ran; made again');
        } catch (err) {
          if (!this.#policySocketSaid.has(p.name)) this.log.error({ policyService: p.name, socket: path, err: { message: (err as Error).message } }, 'policy service: its socket file was removed and cannot be made again: Postfix cannot reach this service');
          this.#policySocketSaid.add(p.name);
        }
      }
    } finally {
      this.#policySocketsChecking = false;
    }
  }

  /**
   * A live process of an earlier server on this data directory (its supervisor killed, the service started
   * again): a worker finishing its sessions, which may still hold the earlier listening socket.
   */
  #earlierServerChild(): number | null {
    const spool = join(this.config.config.dataDir, 'spool');
    if (!existsSync(spool)) return null;
    for (const name of readdirSync(spool)) {
      if (!/^worker-\d+$/.test(name)) continue;
      const pid = lockHolder(join(spool, name));
      if (pid !== null) return pid;
    }
    return null;
  }

  #newChild(kind: Child['kind'], index: number): Child {
    return { kind, index, proc: null, ready: false, lastBeat: 0, progress: null, silence: null, silentRanMs: 0, inflight: new Set(), copies: [], handed: 0, got: 0, elu: 0, cpu: 0, fresh: 0, takingSince: null, acceptPending: false, accepting: false, acceptTurns: 0, stopPending: false, full: false, storeDown: null, spoolUnconfirmedMs: null, startedAt: 0, restarts: 0, lastExit: null, stopAnnounced: null, backoff: new RestartBackoff(), restartTimer: null, silenced: null };
  }

  #spawn(child: Child): void {
    child.restartTimer = null;
    child.stopAnnounced = null;
    if (this.#stopping) return;
    const proc = fork(CHILD_ENTRY, [], {
      execArgv: childExecArgv(),
      env: {
        ...process.env, POSTERN_ROLE: child.kind, POSTERN_WORKER: String(child.index), POSTERN_CONFIG: this.#configPath ?? '',
        POSTERN_WORKERS: String(this.#children.filter((c) => c.kind === 'worker').length),
        // status.json: written by the queue process alone, naming the supervisor (see reload-status.ts).
        POSTERN_SERVER_PID: String(process.pid), ...RUNNING_ENV, POSTERN_STATUS_WRITER: child.kind === 'queue' ? '1' : '0',
      },
      stdio: CHILD_STDIO,
    });
    handOver(proc, { ...runningSettings(this.config.config), handedParse: this.#handedParse });
    Object.assign(child, { proc, ready: false, lastBeat: performance.now(), progress: null, silence: null, silentRanMs: 0, inflight: new Set(), copies: [], handed: 0, got: 0, elu: 0, cpu: 0, fresh: 0, takingSince: null, acceptPending: false, accepting: false, stopPending: false, full: false, storeDown: null, spoolUnconfirmedMs: null, startedAt: performance.now() });
    proc.on('message', (m: unknown) => this.#fromChild(child, proc, m));
    proc.on('exit', (code, signal) => this.#exited(child, proc, code, signal));
    proc.on('error', (err: NodeJS.ErrnoException) => {
      // A message to a child that is exiting (its channel closed while the message was on its way: a stop, a
      // crash) fails with EPIPE or ERR_IPC_CHANNEL_CLOSED; its 'exit' tells the rest. Not an error of its own.
      const channelGone = proc.pid !== undefined && (err.code === 'EPIPE' || err.code === 'ERR_IPC_CHANNEL_CLOSED');
      if (channelGone) this.log.info({ err: { code: err.code, message: err.message }, [child.kind]: child.index }, 'a message to a child that is exiting was not delivered');
      else this.log.error({ err, [child.kind]: child.index }, 'child process error');
      // Never started (fork failed: EAGAIN, ENOMEM): no 'exit' will come, so treat it as one.
      if (proc.pid === undefined) this.#exited(child, proc, null, null, `could not start: ${err.message}`);
    });
  }

  /**
   * A message from a child: acted on when the supervisor can read it (child-messages.ts), else that child is replaced,
   * not believed. Whatever it sent, or whatever acting on it threw, the supervisor (and every other process) stays up.
   */
  #fromChild(child: Child, proc: ChildProcess, m: unknown): void {
    let problem = unreadableChildMessage(m);
    if (problem === null) {
      try {
        return this.#message(child, proc, m as { t?: string });
      } catch (err) {
        problem = `acting on its ${String((m as { t?: unknown }).t)} message threw: ${(err as Error).message}`;
      }
    }
    if (this.#misspoke.has(proc)) return; // being replaced already: said once
    this.#misspoke.add(proc);
    const kind = typeof (m as { t?: unknown } | null)?.t === 'string' ? (m as { t: string }).t.slice(0, 40) : null;
    if (child.proc !== proc) {
      this.log.warn({ [child.kind]: child.index, childPid: proc.pid, message: kind, problem }, `a ${child.kind} process that has ended sent a message the supervisor cannot read (${problem}): ignored`);
      return;
    }
    this.log.error({ [child.kind]: child.index, childPid: proc.pid, message: kind, problem },
      `${child.kind} ${child.index} sent a message the supervisor cannot read (${problem}): replacing it`);
    this.#replace(child, proc);
  }

  /**
   * Replace a child that still runs: no new connections for it, and a clean stop (SIGTERM: its sessions may finish,
   * what it acknowledged is in its spool), killed if it has not ended after the grace time; its exit starts the next.
   */
  #replace(child: Child, proc: ChildProcess): void {
    child.ready = false;
    child.takingSince = null;
    this.#chooseAccepting(); // told to stop accepting, if it did
    proc.kill('SIGTERM');
    setTimeout(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL'); }, RECYCLE_GRACE_MS).unref();
  }

  #message(child: Child, proc: ChildProcess, m: { t?: string; id?: string; dir?: string }): void {
    // A stopping child's counters, sent before it exits (child.ts): read even if its exit was seen first.
    if (m.t === 'metrics-last') return this.#clusterMetrics.lastWords(proc, (m as { metrics?: MetricObjectWithValues<MetricValue<string>>[] }).metrics ?? []);
    if (child.proc !== proc) return;
    child.lastBeat = performance.now();
    const send = (msg: object): void => { if (proc.connected) proc.send(msg); };
    if (this.#store.handle(m, send)) return;
    if (this.#counters.handle(child.index, m as Parameters<CounterHost['handle']>[1], send, (msg) => {
      // Every other child: the workers (SMTP AUTH) and the queue process (the account page's sign-in).
      for (const c of this.#children) if (c !== child && c.ready && c.proc?.connected) c.proc.send(msg);
    })) return;
    switch (m.t) {
      case 'hb':
        child.elu = (m as { elu?: number }).elu ?? 0;
        child.cpu = (m as { cpu?: number }).cpu ?? 0;
        child.fresh = 0;
        child.full = (m as { full?: boolean }).full === true;
        child.storeDown = (m as { store?: Record<string, string[]> }).store ?? null;
        child.spoolUnconfirmedMs = (m as { spoolUnconfirmedMs?: number }).spoolUnconfirmedMs ?? null;
        this.#got(child, (m as { got?: number }).got ?? 0);
        // It accepts on the sockets it was told to accept on: their descriptors reached it.
        if ((m as { accepting?: boolean }).accepting && child.acceptPending) {
          child.acceptPending = false;
          this.#taking(child);
        }
        // It stopped accepting: every slot of what it accepted was asked for before this beat (the lease may go to another).
        if (!(m as { accepting?: boolean }).accepting) child.stopPending = false;
        this.#chooseAccepting();
        return this.#dispatch();
      case 'hello':
        // A worker started: until a worker has accepted, it makes the held sockets listen (child.ts listenOnce).
        if (!this.#heldListening) for (const [listener, held] of this.#held) proc.send({ t: 'listen', listener }, held.handle as unknown as net.Server);
        return;
      case 'listened': {
        // The held socket listens from now on (its queue keeps connections whatever the workers do).
        const listener = (m as { listener?: string }).listener!;
        const held = this.#held.get(listener);
        if (!held || this.#listening.has(listener)) return;
        this.#listening.add(listener);
        this.#heldListening = this.#listening.size === this.#held.size;
        const l = this.config.config.listeners.find((x) => x.name === listener);
        this.log.info({ listener, address: `${held.address}:${held.port}`, tls: l?.tls.mode }, 'listening');
        return;
      }
      case 'full':
        // It stopped accepting at once, near its open-file limit (child.ts): another worker takes over.
        child.full = true;
        child.accepting = false;
        child.acceptPending = false;
        this.#taking(child);
        return this.#chooseAccepting();
      case 'metrics-r': {
        const r = m as { q?: number; metrics?: MetricObjectWithValues<MetricValue<string>>[] };
        this.#metricsWaiting.get(r.q!)?.(r.metrics ?? null);
        return;
      }
      case 'draining':
        // Its sandbox cannot recover (child.ts): no more connections; it ends itself and is replaced.
        child.stopAnnounced = 'recycled';
        child.ready = false;
        child.accepting = false; // it closed its copies of the listening sockets itself
        child.acceptPending = false;
        this.#chooseAccepting();
        this.log.warn({ [child.kind]: child.index, childPid: proc.pid, reason: (m as { reason?: string }).reason, scripts: (m as { scripts?: unknown }).scripts },
          `${child.kind} ${child.index} is being replaced: its sandbox cannot recover (${(m as { reason?: string }).reason})`);
        void this.#saveStatus();
        return;
      case 'stopping':
        // It was told to stop (by a signal of its own, or by us): no new connections; its exit brings the replacement.
        child.stopAnnounced ??= 'signalled';
        child.ready = false;
        child.accepting = false; // it closed its copies of the listening sockets itself
        child.acceptPending = false;
        if (this.#stopping) return;
        this.log.warn({ [child.kind]: child.index, childPid: proc.pid },
          `${child.kind} ${child.index} is stopping (signalled): it gets no new connections, its sessions may finish, and it is replaced once it has ended`);
        this.#chooseAccepting();
        void this.#saveStatus();
        return this.#dispatch();
      case 'ready':
        child.ready = true;
        send({ t: 'fences', list: this.#fences.fences });
        // The auth failures recorded before it ran (those after are relayed to it as they come).
        if (child.kind === 'worker') send({ t: 'failures', list: this.#counters.failureTable() });
        // An edit told to the others while this one was starting: a check (no build when it read the same).
        send({ t: 'reload', reason: 'change' });
        this.log.info({ [child.kind]: child.index, childPid: proc.pid }, `${child.kind} ready`);
        if (this.#firstStart && this.#children.every((c) => c.ready)) {
          this.#firstStart.resolve();
          this.#firstStart = null;
        }
        void this.#saveStatus();
        this.#chooseAccepting();
        return this.#dispatch();
      case 'reload-state':
        this.#reloads.answered(`${child.kind} ${child.index}`, (m as { state: ChildReloadState }).state);
        return void this.#saveStatus();
      case 'spooled': {
        const queue = this.#children.find((c) => c.kind === 'queue');
        // Without a queue process right now its first scan finds the message.
        if (queue?.ready && queue.proc?.connected) queue.proc.send(m);
        return;
      }
    }
  }

  #exited(child: Child, proc: ChildProcess, code: number | null, signal: NodeJS.Signals | null, why?: string): void {
    if (child.proc !== proc) return;
    child.proc = null;
    child.ready = false;
    this.#clusterMetrics.exited(proc);
    // Never reached it, or died with it: the client sees the close.
    for (const socket of child.inflight) socket.destroy();
    for (const { socket } of child.copies.splice(0)) socket.destroy();
    child.inflight.clear();
    child.accepting = false;
    child.stopPending = false; // it takes no slot any more (nor does the lease wait for it)
    if (child.kind === 'worker') this.#counters.workerGone(child.index);
    this.#chooseAccepting();
    this.#reloads.forget(`${child.kind} ${child.index}`);
    child.lastExit = why ?? (signal ? `signal ${signal}` : `exit code ${code}`);
    // Blame is bookkeeping: whatever fails there (the disk), the process is replaced below.
    try {
      this.#collectCrashes(this.#diedIn(child, proc, code, signal));
    } catch (err) {
      this.log.error({ err: { message: (err as Error).message } }, `cannot account for the death of ${child.kind} ${child.index}`);
    }
    if (this.#firstStart && child.restarts === 0 && !this.#stopping) {
      this.#firstStart.reject(new Error(`${child.kind} process ${child.index} could not start (${child.lastExit})`));
      this.#firstStart = null;
      return;
    }
    if (this.#stopping) return;
    const delay = child.backoff.died(performance.now() - child.startedAt);
    child.restarts++;
    metrics.processRestarts.inc({ role: child.kind });
    // Stopped on purpose and ended cleanly (its sessions and attempts settled): no death, and nothing is sent again.
    if (child.stopAnnounced && code === 0 && signal === null) {
      this.log.warn({ [child.kind]: child.index, childPid: proc.pid, code, signal, restartInMs: delay },
        `${child.kind} ${child.index} stopped (${child.stopAnnounced}, exit code 0): replacing it`);
      child.restartTimer = setTimeout(() => this.#spawn(child), delay);
      void this.#saveStatus();
      return;
    }
    // A delivery whose next hop said 250 before its done mark was written is made again: at least once, logged here.
    const resent = child.kind === 'queue' ? '; a delivery it had under way may be made again' : '';
    this.log.error({ [child.kind]: child.index, childPid: proc.pid, code, signal, restartInMs: delay }, `${child.kind} process died (${child.lastExit}): replacing it${resent}`);
    child.restartTimer = setTimeout(() => this.#spawn(child), delay);
    void this.#saveStatus();
  }

  /**
   * A child that died by a signal or an abnormal exit while running scripts (its running-call mirror says
   * which) is a crash to blame on them: a death at once (SIGSEGV in a builtin, a native abort) leaves no
   * other trace. A hang its watchdog thread recorded is not counted twice (it clears the mirror, and its
   * record names the pid).
   */
  #diedIn(child: Child, proc: ChildProcess, code: number | null, signal: NodeJS.Signals | null): CrashRecord[] {
    if (proc.pid === undefined) return [];
    const mirror = runningMirror(this.config.config.dataDir, proc.pid);
    const abnormal = !this.#stopping && (signal !== null || code !== 0);
    // Its watchdog recorded a hang (and was killed, by itself or by us, before or after clearing the mirror).
    const recorded = readdirSync(crashDir(this.config.config.dataDir)).some((name) => name.startsWith(`crash-${proc.pid}-`));
    const scripts = abnormal && !recorded ? this.#blamed(child, proc.pid, mirror) : [];
    removeMirror(mirror);
    if (!scripts.length) return [];
    this.log.error({ [child.kind]: child.index, childPid: proc.pid, code, signal, scripts },
      `${child.kind} ${child.index} died (${signal ? `signal ${signal}` : `exit code ${code}`}) while running ${scripts.map((s) => `${s.hook} (${s.file})`).join(', ')}`);
    return [{ worker: child.index, scripts }];
  }

  /**
   * The scripts a child's abnormal death is blamed on: every script it was running, unless this supervisor killed it
   * for a silence. Then only a call on its event loop (the thread that went silent) is to blame: a call on an isolate
   * thread cannot hold that thread's timers back, and was blamed for kills of workers merely slowed by load. And
   * none when it was held still (SIGSTOP, a debugger: each such kill had counted as a crash of the scripts it ran,
   * and a worker stopped three times while a healthy script ran fenced it), nor when its main thread did not run for
   * the limit (silence-blame.ts).
   */
  #blamed(child: Child, pid: number, mirror: string): RunningScript[] {
    const silenced = child.silenced?.pid === pid ? child.silenced : null;
    if (!silenced) return readMirror(mirror);
    return silenceBlamesEventLoop(silenced) ? readMirror(mirror, true) : [];
  }

  #collectCrashes(more: CrashRecord[] = []): void {
    const { fenced } = this.#fences.collect(more);
    for (const f of fenced) {
      // A shadow script decides no reply: fenced, it stops running beside the live one, whose replies are unchanged.
      if (f.shadow) this.log.error({ hook: f.hook, script: f.file, sha256: f.sha256, crashes: f.crashes, shadow: true },
        `fenced shadow ${f.hook} script ${f.file}: it crashed or hung its worker; it no longer runs (live replies are unchanged) until the file changes`);
      else this.log.error({ hook: f.hook, script: f.file, sha256: f.sha256, crashes: f.crashes },
        `fenced ${f.hook} script ${f.file}: it crashed or hung its worker ${f.crashes} times; its hook answers 451 4.3.0 until the file changes`);
    }
    if (fenced.length) this.#broadcastFences();
  }

  #broadcastFences(): void {
    for (const c of this.#children) if (c.ready && c.proc?.connected) c.proc.send({ t: 'fences', list: this.#fences.fences });
    void this.#saveStatus();
    if (this.#fences.fences.length && !this.#fenceTimer) {
      const kept = (f: Fence): void => this.log.info({ hook: f.hook, script: f.file },
        `fence kept: ${f.file} changed, but not every process runs a generation built from it yet (a refused reload?); lifted once they do`);
      this.#fenceTimer = setInterval(() => void this.#fences.lift(() => this.#reloads.inForceEverywhere(), kept).then((lifted) => {
        for (const f of lifted) this.log.warn({ hook: f.hook, script: f.file }, `fence lifted: ${f.file} changed`);
        if (lifted.length) this.#broadcastFences();
        if (!this.#fences.fences.length && this.#fenceTimer) { clearInterval(this.#fenceTimer); this.#fenceTimer = null; }
      }), 1000);
      this.#fenceTimer.unref();
    }
  }

  /** `proxy`: the listener's trusted PROXY-protocol senders; `policy`: a policy service's connection. */
  #accepted(listener: string, socket: net.Socket, proxy: TrustedProxies | null, policy = false): void {
    socket.on('error', () => undefined); // a client resetting while it waits here
    if (!this.#fileRoom.accepted()) {
      this.#noteFileRoom();
      closedUnansweredCounted(listener, 'server-busy');
      return void socket.destroy();
    }
    if (this.#waiting.length >= MAX_WAITING) return this.#waitingFull(listener, socket);
    this.#waitingFullReported = false;
    if (proxy && !proxy.has(socket.remoteAddress)) {
      const peer = clientAddress(socket);
      this.log.info({ listener, decision: 'reject', stage: 'PROXY', client: peer, reason: UNTRUSTED_PROXY_REASON, reply: null, peer },
        'PROXY protocol: connection from an untrusted address closed');
      closedUnansweredCounted(listener, 'untrusted-proxy');
      return void socket.destroy();
    }
    if (policy) {
      // Bounded by the service's maxConnections as a listener's are by theirs: a local client flooding the policy
      // port while no worker could take them filled the queue every listener's clients wait in.
      const max = this.#policyLimits(listener)?.maxConnections ?? Infinity;
      const key = policyConnectionKey(listener);
      if (this.#waitingCounts.ofListener(listener) >= max) {
        if (!this.#floodReported.has(key)) {
          this.#floodReported.add(key);
          this.log.info({ policyService: listener, limit: max }, 'too many connections to this policy service waiting for a worker (limits.maxConnections), closed at accept (logged once until it comes back under)');
        }
        return void socket.destroy();
      }
      this.#floodReported.delete(key);
      this.#waitingCounts.add(listener, key);
      this.#waiting.push({ listener, socket, policy, proxied: false, key });
      return this.#dispatch();
    }
    const limits = this.#limits(listener);
    if (proxy) {
      // The client is named by the header a worker reads: here only the listener's count can be checked.
      const key = `${listener} (behind a proxy)`;
      if (limits && this.#queueFull(listener, key, { maxConnectionsPerIp: Infinity, maxConnections: limits.maxConnections })) return void socket.destroy();
      this.#waitingCounts.add(listener, key);
      this.#waiting.push({ listener, socket, policy, proxied: true, key });
      return this.#dispatch();
    }
    // As the worker's listener counts it: an IPv6 client by its network (counted-address.ts).
    const ip = countedAddress(clientAddress(socket), limits?.ipv6PrefixLength ?? 128);
    const key = `${listener} ${ip}`;
    if (limits && this.#queueFull(listener, key, limits)) return void socket.destroy();
    this.#waitingCounts.add(listener, key);
    this.#waiting.push({ listener, socket, policy, proxied: false, key, ip });
    this.#dispatch();
  }

  /**
   * One more connection waiting here (for a worker to take it) would be more than its client's limit, or
   * than its listener's: closed at accept, unanswered, rather than queued. Past those counts every one of
   * them would get 421 at its hand-over anyway, and a flood of them (one address, or many against
   * maxConnections) filled this queue, which every other client waits in, while workers could not keep up
   * or were being replaced. Slots already taken are not counted here: the supervisor still counts slots
   * given back and not yet told (shared-counters.ts), so a client reconnecting fast at its limit would be
   * closed for connections it no longer has; the worker's 421 decides on exact counts.
   */
  #queueFull(listener: string, key: string, limits: { maxConnectionsPerIp: number; maxConnections: number }): boolean {
    const perIp = this.#waitingCounts.ofKey(key) >= limits.maxConnectionsPerIp;
    const total = this.#waitingCounts.ofListener(listener) >= limits.maxConnections;
    const what = perIp ? key : total ? listener : null;
    if (what === null) {
      if (this.#floodReported.size) { this.#floodReported.delete(key); this.#floodReported.delete(listener); }
      return false;
    }
    // Logged once an episode, counted each time: the metric shows how big the flood is.
    closedUnansweredCounted(listener, perIp ? 'per-ip-limit' : 'max-connections');
    if (!this.#floodReported.has(what)) {
      this.#floodReported.add(what);
      if (this.#floodReported.size > 10_000) this.#floodReported.clear();
      this.log.info({ listener, decision: 'reject', stage: 'CONNECT', client: key.slice(listener.length + 1), reply: null,
        reason: perIp ? 'limits.maxConnectionsPerIp: as many waiting for a worker (closed at accept)' : 'limits.maxConnections: as many waiting for a worker (closed at accept)' },
      perIp ? 'too many connections from this address waiting for a worker, closed at accept (logged once until it comes back under)'
        : 'too many connections to this listener waiting for a worker, closed at accept (logged once until it comes back under)');
    }
    return true;
  }

  /** MAX_WAITING connections wait for a worker already: closed at accept, counted, logged once until there is room. */
  #waitingFull(listener: string, socket: net.Socket): void {
    closedUnansweredCounted(listener, 'server-busy');
    if (!this.#waitingFullReported) {
      this.#waitingFullReported = true;
      this.log.warn({ listener, decision: 'reject', stage: 'CONNECT', client: clientAddress(socket), reply: null, waiting: this.#waiting.length, reason: `${MAX_WAITING} connections waiting for a worker (closed at accept)` },
        'too many connections waiting for a worker, new ones closed at accept (logged once until there is room)');
    }
    socket.destroy();
  }

  /** limits of listener `name`, as the configuration every process runs names it (they change at a reload). */
  #limits(name: string): { maxConnectionsPerIp: number; maxConnections: number; ipv6PrefixLength: number } | undefined {
    const byName = (l: { name: string }): boolean => l.name === name;
    const started = this.config.config.listeners.find(byName)?.limits;
    // A listener the configuration in force no longer has is still bound until the restart: its limits as started.
    const inForce = this.#inForce?.listeners.find(byName)?.limits ?? started;
    // ipv6PrefixLength stays the start's: the slots are counted by it (restart-needed.ts).
    return inForce && started ? { ...inForce, ipv6PrefixLength: started.ipv6PrefixLength } : inForce;
  }

  /** limits of policy service `name`, as the configuration every process runs names it (a removed one: as started, it is still bound). */
  #policyLimits(name: string): Config['policyServices'][number]['limits'] | undefined {
    const byName = (p: { name: string }): boolean => p.name === name;
    return (this.#inForce?.policyServices.find(byName) ?? this.config.config.policyServices.find(byName))?.limits;
  }

  /**
   * Which workers accept on the held listening sockets (workerChoice: fill): the first able one, and the
   * next ones while those before are busy (worker-choice.ts). Able: ready, beating (a hung worker accepts
   * nothing, so the next takes over once its heartbeat is late), not at its open-file limit. A worker told
   * to accept gets the sockets with the message (it closes its copies when told to stop).
   */
  #chooseAccepting(): void {
    // Judged in the check phase, once the poll phase has read every child's channel: a choice made as the first
    // message is read (the queue process's beat) took the workers' beats still unread for stale, after a moment
    // the supervisor did not run, and told the accepting worker to stop.
    this.#choiceLook ??= setImmediate(() => {
      this.#choiceLook = null;
      this.#chooseAcceptingNow();
    });
  }

  /** The choice itself: in the check phase only (#chooseAccepting, #tick). */
  #chooseAcceptingNow(): void {
    if (this.#stopping) return;
    const now = performance.now();
    const workers = this.#children.filter((c) => c.kind === 'worker');
    if (!this.#held.size) {
      // roundRobin: the supervisor takes the slot of each connection it hands over. A server's only worker
      // still counts its PROXY protocol clients' slots alone (the lease, never ended: no other worker runs).
      const only = workers.length === 1 ? workers[0]! : null;
      if (only?.ready && only.proc?.connected && this.#counters.leaseHolder === null) this.#counters.grant(only.index);
      return;
    }
    const able = workers.filter((c) => c.ready && c.proc?.connected && now - c.lastBeat < STALE_FOR_CONNECTIONS_MS && !c.full);
    const chosen = new Set(able.slice(0, able.length ? acceptingCount(able, this.#spare) : 0));
    const holder = this.#counters.leaseHolder;
    if (holder !== null && [...chosen].some((c) => c.index !== holder)) {
      // Another worker is to accept: not before the holder's slots are counted here, or it died (a hung
      // holder's connections are visible nowhere until its death closes them). This runs again then.
      this.#counters.endLease();
      for (const c of chosen) if (c.index !== holder) chosen.delete(c);
    }
    let changed = false;
    for (const c of workers) {
      const accept = chosen.has(c);
      if (accept === c.accepting) continue;
      c.accepting = accept;
      if (!c.proc?.connected) continue;
      c.acceptPending = accept;
      this.#taking(c);
      if (accept) {
        c.acceptTurns++;
        for (const [listener, held] of this.#held) c.proc.send({ t: 'accept', listener }, held.handle as unknown as net.Server);
      } else {
        c.proc.send({ t: 'accept-stop' });
        c.stopPending = true;
      }
      changed = true;
    }
    // One worker accepts, and every other has said it stopped (so none asks for slots any more, but by a
    // rare straggler, which ends the lease): that one counts alone, without a round trip per connection.
    const [only] = chosen;
    if (holder === null && only && chosen.size === 1 && workers.every((c) => c === only || (!c.accepting && !c.stopPending))) changed = this.#counters.grant(only.index) || changed;
    if (changed) void this.#saveStatus(); // who accepts, in cluster.json (`postern status` asks live)
  }

  /**
   * Hand waiting connections to workers able to take one now: SMTP connections to the first that is not
   * busy (worker-choice.ts), policy-service connections (and all with `workerChoice: roundRobin`) round
   * robin (Postfix keeps each for minutes, and spreading those long-lived connections spreads their load).
   */
  #dispatch(): void {
    const workers = this.#children.filter((c) => c.kind === 'worker');
    while (this.#waiting.length) {
      const now = performance.now();
      const alive = workers.filter((c) => c.ready && c.proc?.connected && now - c.lastBeat < STALE_FOR_CONNECTIONS_MS);
      let chosen: Child;
      if (this.#waiting[0]!.policy || this.config.config.workerChoice === 'roundRobin') {
        const able = alive.filter((c) => c.inflight.size < MAX_INFLIGHT);
        if (!able.length) return;
        chosen = able.find((c) => c.index >= this.#next) ?? able[0]!;
        this.#next = chosen.index + 1;
      } else {
        if (!alive.length) return;
        chosen = alive[chooseWorker(alive, this.#spare)]!;
        // Its channel passes one descriptor at a time: wait for it rather than spill to the next worker.
        if (chosen.inflight.size >= MAX_INFLIGHT) return;
      }
      const { listener, socket, policy, proxied, key, ip } = this.#waiting.shift()!;
      if (key !== undefined) this.#waitingCounts.remove(listener, key);
      if (socket.destroyed) continue;
      chosen.fresh++;
      chosen.inflight.add(socket);
      chosen.takingSince ??= now;
      const proc = chosen.proc!;
      const n = ++chosen.handed;
      const written = this.#written(chosen, proc, socket, n);
      if (policy) {
        // No per-IP slot (the peer is Postfix), but one slot of the service's, so that its maxConnections
        // holds for the whole server rather than per worker: the worker refuses when `open` is over it.
        const key = policyConnectionKey(listener);
        const open = this.#counters.take(chosen.index, key);
        proc.send({ t: 'conn', n, listener, policy: true, key, open, seen: this.#counters.seen(chosen.index) }, socket, KEEP_OPEN, written);
        continue;
      }
      if (proxied) {
        // The worker reads the PROXY header (the supervisor never reads a byte: none is lost in the handover)
        // and takes the client's slot by round trip ('conn+'), under the address the header names.
        proc.send({ t: 'conn', n, listener }, socket, KEEP_OPEN, written);
        continue;
      }
      // The connection's per-IP slot is taken here, with the handover (see shared-counters.ts).
      const open = this.#counters.take(chosen.index, key!);
      const total = this.#counters.total(listener); // over every worker: limits.maxConnections is the listener's
      // `seen`: the worker subtracts the slots it gave back that these counts still hold (shared-counters.ts).
      const message = { t: 'conn', n, listener, key, port: socket.remotePort, open, total, ip, failures: this.#counters.failures(ip!), seen: this.#counters.seen(chosen.index) };
      proc.send(message, socket, KEEP_OPEN, written);
    }
  }


  /** The callback of hand-over `n`: Node wrote the descriptor to the worker's channel, or could not. */
  #written(child: Child, proc: ChildProcess, socket: net.Socket, n: number): (err: Error | null) => void {
    return (err) => {
      if (child.proc !== proc) return void socket.destroy(); // that process is gone (its exit closed the others)
      child.inflight.delete(socket);
      if (err || n <= child.got) socket.destroy(); // not sent; or the worker already has its own
      else child.copies.push({ n, socket });
      this.#taking(child);
      this.#dispatch();
    };
  }

  /** The worker's heartbeat: it has its own descriptor of every hand-over up to `got`; ours can close. */
  #got(child: Child, got: number): void {
    if (got <= child.got) return;
    child.got = got;
    while (child.copies.length && child.copies[0]!.n <= got) child.copies.shift()!.socket.destroy();
    this.#taking(child);
  }

  /** Hand-overs moved on: the wait for the worker to take what is left (if anything) counts from now. */
  #taking(child: Child): void {
    child.takingSince = child.inflight.size || child.copies.length || child.acceptPending ? performance.now() : null;
  }

  /** When #tick last ran (monotonic). */
  #lastTick = performance.now();

  /** Says once that it is near its open-file limit, and once that it has room again (see #fileRoom). */
  #noteFileRoom(): void {
    const room = this.#fileRoom;
    if (room.full === this.#fileRoomFullReported) return;
    this.#fileRoomFullReported = room.full;
    if (room.full) {
      this.log.warn({ openFiles: room.open, limit: room.limit },
        'supervisor is near its open-file limit: connections it accepts (policy services, listeners with workerChoice roundRobin) are closed at once until descriptors are free (raise LimitNOFILE)');
    } else {
      this.log.info({ openFiles: room.open, limit: room.limit }, 'supervisor has descriptors to spare again: it accepts connections');
    }
  }

  #tick(): void {
    const now = performance.now();
    this.#fileRoom.count();
    this.#noteFileRoom();
    const late = now - this.#lastTick > SUPERVISOR_HANG_MS / 2;
    this.#lastTick = now;
    if (this.#children.length > 2) { // more than one worker: what the machine leaves idle decides spreading
      const sample = cpuSample();
      this.#spare = spareCores(this.#cpus, sample);
      this.#cpus = sample;
    }
    for (const c of this.#children) {
      // This process did not run either (SIGSTOP, a frozen cgroup, a suspended VM): the children's
      // heartbeats are still unread, so their silence proves nothing yet; count it from now.
      if (late) {
        c.lastBeat = Math.max(c.lastBeat, now);
        if (c.takingSince !== null) c.takingSince = now;
      }
      this.#watchProgress(c, now);
      // Heartbeats start once a child is ready; building its first generation may take a while.
      const limit = c.ready ? SUPERVISOR_HANG_MS : STARTUP_MS;
      if (c.proc && c.proc.exitCode === null && now - c.lastBeat > limit && !this.#busy(c, now)) {
        const held = heldStill(c.proc.pid!);
        c.silenced = { pid: c.proc.pid!, heldStill: held, ranMs: c.silentRanMs, mainRanMs: c.silence?.mainRanMs ?? null };
        this.log.error({ [c.kind]: c.index, childPid: c.proc.pid, silentMs: Math.round(now - c.lastBeat), ranMs: Math.round(c.silentRanMs), heldStill: held },
          `${c.kind} stopped answering: killing it${held ? ' (it was held still, by a signal or a debugger: no script is blamed)' : ''}`);
        c.lastBeat = now; // one kill per silence
        c.proc.kill('SIGKILL');
      } else if (c.ready && c.proc && c.takingSince !== null && now - c.takingSince > TAKE_MS) {
        // It beats, yet takes no connection (or does not accept on the sockets sent to it): its channel cannot
        // pass descriptors any more (one it could not accept, at its file limit, leaves Node waiting for an
        // acknowledgement for ever, and every later message behind it). The rest of its
        // sessions may finish (SIGTERM: a clean stop); the connections waiting for it are closed at its exit.
        this.log.error({ [c.kind]: c.index, pid: c.proc.pid, waiting: c.inflight.size + c.copies.length, waitedMs: Math.round(now - c.takingSince) },
          `${c.kind} ${c.index} takes no connections handed to it: replacing it`);
        this.#replace(c, c.proc);
      }
    }
    this.#chooseAcceptingNow();
    this.#dispatch();
  }

  /**
   * A silent child whose main thread still makes read and write calls is working through a long poll (a
   * crowd of TLS handshakes: thread-progress.ts), not hung; nor is one whose main thread waited for a CPU (its
   * silence counts only while it was not waiting: silence-clock.ts); either for at most BUSY_WITHOUT_TIMERS_MS.
   * Looked at on every tick of a silence longer than three heartbeats, so the readings are there by the limit.
   */
  #busy(c: Child, now: number): boolean {
    return now - c.lastBeat < BUSY_WITHOUT_TIMERS_MS && c.silentRanMs < SUPERVISOR_HANG_MS;
  }

  #watchProgress(c: Child, now: number): void {
    if (!c.ready || !c.proc?.pid || c.proc.exitCode !== null || now - c.lastBeat < 3 * HEARTBEAT_MS) {
      c.progress = null;
      c.silence = null;
      c.silentRanMs = now - c.lastBeat; // not looked at: every moment counts (a child starting up: STARTUP_MS)
      return;
    }
    c.progress ??= new ThreadProgress(c.proc.pid);
    if (!c.silence) {
      // The first look: the silence so far (three heartbeats) counts whole.
      c.silence = new SilenceClock(c.proc.pid);
      c.silence.reset(now, now - c.lastBeat);
    }
    if (c.progress.moved()) c.silence.reset(now);
    c.silentRanMs = c.silence.look(now);
  }

  /** SIGHUP: every child reloads, once. */
  reload(): void {
    this.#reloads.hup();
  }

  /**
   * The admin listener of the whole server: metrics are every child's (asked over IPC, summed by
   * prom-client's aggregator) plus the supervisor's own; readiness and status are the supervisor's view
   * with the reload state the queue process writes.
   */
  #adminTarget(): AdminTarget {
    const statusFile = join(this.config.config.dataDir, 'status.json');
    // The counters of status.json (the queue process's), with the errors and generations of every process.
    const reloadStatus = async (): Promise<{ lastError?: string[] | null } & Record<string, unknown>> => {
      const { lastError, converged, processes } = this.#reloads.status();
      return { ...JSON.parse(await readFile(statusFile, 'utf8').catch(() => '{}')) as object, lastError, converged, generations: processes };
    };
    const metricsOfAll = async (): Promise<{ contentType: string; text: string }> => {
      const answers = await Promise.all(this.#children.filter((c) => c.proc?.connected).map((c) => this.#childMetrics(c)));
      const merged = this.#clusterMetrics.merged(await registry.getMetricsAsJSON(), answers);
      return { contentType: merged.contentType, text: await merged.metrics() };
    };
    const readiness = async (listener?: string): Promise<Record<string, ReadinessCheck> | null> => {
      if (listener !== undefined && !this.addresses.has(listener)) return null;
      const lastError = (await reloadStatus()).lastError;
      return {
        listeners: [...this.#listeners, ...this.#policyListeners.map((p) => p.server)].every((l) => l.listening) && (this.#held.size === 0 || this.#heldListening)
          ? { ok: true } : { ok: false, detail: 'a listener is not bound' },
        processes: this.#processesCheck(),
        spool: spoolConfirmsWrites(this.#children.filter((c) => c.ready && c.proc?.connected && c.spoolUnconfirmedMs !== null)
          .map((c) => ({ spool: c.kind === 'worker' ? `worker-${c.index}` : 'the queue process', ms: c.spoolUnconfirmedMs!, deliveriesOnly: c.kind !== 'worker' })))
          ?? await spoolWritable(this.config.config.dataDir, (this.#inForce ?? this.config.config).spool),
        lock: this.#keepLock(),
        store: storeCheckOf(this.#children.find((c) => c.kind === 'worker' && c.ready && c.storeDown)?.storeDown ?? null, listener),
        reload: reloadCheck(lastError),
      };
    };
    return {
      metrics: metricsOfAll,
      readiness,
      status: async () => {
        const reload = await reloadStatus();
        // Against what this server has bound, not against the last generation a reload built: an
        // unrelated reload must not make a listener that still runs on its old port look settled.
        const children = await Promise.all(this.#children.filter((c) => c.proc?.connected).map((c) => this.#childMetrics(c)));
        const shadow = shadowCounts(children.filter((a): a is MetricObjectWithValues<MetricValue<string>>[] => a !== null));
        const pendingRestart = this.#pendingRestart();
        const queue = await this.#queueSize();
        const cluster = this.status();
        // /readyz's checks: `postern status` says the server refuses mail (a spool read-only or full, Redis) as the load balancer sees it.
        const checks = (await readiness())!;
        const notReady = Object.entries(checks).filter(([, c]) => !c.ok).map(([name, c]) => `${name}: ${c.detail ?? 'failed'}`);
        const { watching, settling } = this.#reloads.status();
        const summary = statusSummary({ processes: cluster.processes, fences: cluster.fences, lastError: reload.lastError ?? null, pendingRestart, queue, notReady,
          watching, pollSeconds: POLL_MS / 1000, settling });
        return { summary, ...reload, pendingRestart, workerPendingRestart: reload.pendingRestart, queue, readiness: { ready: notReady.length === 0, checks }, cluster, shadow };
      },
    };
  }

  /**
   * /readyz's processes check: a worker takes connections (ready, its channel open, not at its open-file limit:
   * what #dispatch and #chooseAccepting hand connections to) and the queue process runs (else accepted mail
   * waits undelivered). Every worker ready but each at its open-file limit said ready while connections waited
   * in the port's queue, unserved; one worker of several being replaced (a crash, a recycle, a back-off) said
   * not ready while the others served, taking a working node out of its load balancer's pool.
   */
  #processesCheck(): ReadinessCheck {
    const workers = this.#children.filter((c) => c.kind === 'worker');
    const why = (c: Child): string => `${c.kind} ${c.index} ${!c.ready || !c.proc?.connected ? 'not ready' : 'at its open-file limit'}`;
    const out = [...workers.filter((c) => !(c.ready && c.proc?.connected && !c.full)), ...this.#children.filter((c) => c.kind !== 'worker' && !c.ready)];
    if (!out.length) return { ok: true };
    const serving = workers.length - out.filter((c) => c.kind === 'worker').length;
    const queueDown = out.some((c) => c.kind !== 'worker');
    const detail = out.map(why).join(', ');
    if (serving === 0) return { ok: false, detail: `no worker takes connections (${detail}): they wait unserved` };
    if (queueDown) return { ok: false, detail: `${detail}: accepted mail waits undelivered` };
    return { ok: true, detail: `${detail}; ${serving} of ${workers.length} workers take connections` };
  }

  /**
   * The data directory's lock, checked every LOCK_CHECK_MS and for /readyz: removed while the server ran (a
   * cleanup of the folder, systemd-tmpfiles on /tmp or /run), nothing stopped a second `postern serve` on the same
   * data directory, which takes the other's half-received messages for a crash's leftovers and writes the same
   * journals. Made again at once; held by another live process, the server is not ready (two serve one spool).
   */
  #keepLock(): ReadinessCheck {
    const lock = this.#lock;
    if (!lock) return { ok: true };
    const kept = lock.keep();
    const file = lock.lockFile;
    if (kept.state !== this.#lockState) {
      if (kept.state === 'restored') this.log.error({ lockFile: file }, 'data directory lock: its file was removed while the server ran; made again (another server could have started on this data directory meanwhile)');
      else if (kept.state === 'taken') this.log.error({ lockFile: file, holder: kept.pid }, `data directory lock: held by process ${kept.pid} now: two servers use this data directory; stop one`);
      else if (kept.state === 'unwritable') this.log.error({ lockFile: file, err: { message: kept.error } }, 'data directory lock: its file was removed and cannot be made again');
      this.#lockState = kept.state === 'restored' ? 'held' : kept.state;
    }
    if (kept.state === 'taken') return { ok: false, detail: `the data directory's lock ${file} is held by process ${kept.pid}: two servers use this data directory` };
    if (kept.state === 'unwritable') return { ok: false, detail: `the data directory's lock ${file} is gone and cannot be made again (${kept.error}): another server could start on this data directory` };
    return { ok: true };
  }

  /**
   * The status socket made again when its file is gone, or another file is in its place (a cleaner of /tmp ageing
   * it out, a careless `rm`, a restore of the folder): `postern status` said "not running" for the rest of the
   * server's life, and an on-call would start a second one. Checked with the lock, every LOCK_CHECK_MS; the lock
   * says this server alone uses the data directory, so whatever is at the path is replaced.
   */
  async #keepStatusSocket(): Promise<void> {
    const old = this.#statusServer;
    if (!old || this.#statusSocketRemaking) return;
    const path = statusSocket(this.config.config.dataDir);
    const found = lstatSync(path, { throwIfNoEntry: false });
    if (found?.isSocket() && found.ino === this.#statusSocketIno) return;
    this.#statusSocketRemaking = true;
    try {
      await old.close(); // first: closing a unix socket's server unlinks its path, which would take the new one
      const made = await startAdminServer(`unix:${path}`, this.#adminTarget());
      if (this.#statusServer !== old) { // stopped meanwhile
        await made.close();
        return;
      }
      this.#statusServer = made;
      this.#statusSocketIno = lstatSync(path).ino;
      this.#statusSocketFailed = false;
      this.log.error({ socket: path }, `status socket: its file was ${found ? 'replaced' : 'removed'} while the server ran; made again`);
    } catch (err) {
      // Tried again at the next check; said once.
      if (!this.#statusSocketFailed) this.log.error({ socket: path, err: { message: (err as Error).message } }, 'status socket: its file was removed or replaced and cannot be made again: postern status cannot ask this server');
      this.#statusSocketFailed = true;
    } finally {
      this.#statusSocketRemaking = false;
    }
  }

  /** What the configuration on disk asks for that only a restart applies, against what this supervisor runs. */
  #pendingRestart(): string[] {
    let onDisk: LoadedConfig;
    try {
      // Its event loop: never wait on a FIFO. The start's parse while the file holds the same text (handed-parse.ts).
      onDisk = loadStartConfig({ configPath: this.#configPath, regularFileOnly: true, handed: this.#handedParse });
    } catch {
      return []; // a broken file: the reload error says so
    }
    return serveRestartNeeded(this.config.config, onDisk.config);
  }

  /** Messages (held ones, the oldest's age) in every spool of the data directory, or why they cannot be counted. */
  async #queueSize(): Promise<QueueCensus | { error: string }> {
    return this.#census().catch((err: Error) => ({ error: err.message }));
  }

  /** Every spool of the data directory counted, read as `postern queue` reads them (safe while they run). */
  async #census(): Promise<QueueCensus> {
    const spools = new SpoolSet(new Spool(join(this.config.config.dataDir, 'spool')));
    try {
      return await spools.census();
    } finally {
      spools.close();
    }
  }

  /** A child's metrics now; a child that does not answer within 2 s (hung, busy): the last it gave (cluster-metrics.ts). */
  #childMetrics(child: Child): Promise<MetricObjectWithValues<MetricValue<string>>[] | null> {
    const q = ++this.#metricsNext;
    const proc = child.proc!;
    return new Promise((resolve) => {
      const answered = (metrics: MetricObjectWithValues<MetricValue<string>>[] | null): void => {
        clearTimeout(timer);
        this.#metricsWaiting.delete(q);
        resolve(proc === child.proc ? this.#clusterMetrics.answered(proc, metrics) : null);
      };
      const timer = setTimeout(() => answered(null), 2000);
      this.#metricsWaiting.set(q, answered);
      proc.send({ t: 'metrics', q });
    });
  }

  async stop(): Promise<void> {
    // At once, before anything is waited for: a child signalled with the whole process group says it is stopping
    // meanwhile, which must not be taken for one stopped alone (replaced, the others told to accept).
    this.#stopping = true;
    // First: closing the status socket's server removes its file, which #keepStatusSocket would make again.
    if (this.#lockTimer) clearInterval(this.#lockTimer);
    await Promise.all([this.#admin?.close(), this.#statusServer?.close(), this.#reloads.close()]);
    this.#admin = null;
    this.#statusServer = null;
    if (this.#timer) clearInterval(this.#timer);
    if (this.#tickLook) clearImmediate(this.#tickLook);
    if (this.#choiceLook) clearImmediate(this.#choiceLook);
    if (this.#lockTimer) clearInterval(this.#lockTimer);
    if (this.#fenceTimer) clearInterval(this.#fenceTimer);
    // Not waited for: a net.Server that handed sockets to children waits for each child to report them
    // closed, and smtp-server's STARTTLS strips the raw socket's listeners, the one that reports included:
    // the wait would never end (and Postfix keeps policy connections open for minutes). Accepting stops at
    // once; the children's stop ends their sessions.
    for (const s of [...this.#policyListeners, ...this.#listeners]) s.close();
    // The workers close their copies as they stop: the port closes with the last one.
    for (const held of this.#held.values()) held.handle.close();
    this.#held.clear();
    for (const w of this.#waiting.splice(0)) {
      if (w.key !== undefined) this.#waitingCounts.remove(w.listener, w.key);
      w.socket.destroy();
    }
    await Promise.all(this.#children.map((c) => {
      if (c.restartTimer) clearTimeout(c.restartTimer);
      const proc = c.proc;
      if (!proc || proc.exitCode !== null) return undefined;
      return new Promise<void>((resolve) => {
        const kill = setTimeout(() => {
          // Said: a process cut short at its stop may not have recorded what it did (a delivery's outcome).
          this.log.error({ [c.kind]: c.index, childPid: proc.pid }, `${c.kind} ${c.kind === 'worker' ? `${c.index} ` : ''}did not end within 30 s of the stop: killed`);
          proc.kill('SIGKILL');
        }, 30_000);
        proc.once('exit', () => { clearTimeout(kill); resolve(); });
        // A child still starting may not listen to its IPC channel yet (a message then is lost): its signal
        // handler, or the default action, stops it.
        if (proc.connected && c.ready) proc.send({ t: 'stop' }); else proc.kill('SIGTERM');
      });
    }));
    // A cluster.json write under way (a child's last reload state, say) finishes: cut by the exit, it left its temporary file.
    await this.#saving;
    this.#lock?.release();
    this.#lock = null;
  }

  /** What `postern status` shows about the processes. */
  status(): { processes: Array<{ role: string; index: number; ready: boolean; restarts: number } & Record<string, unknown>>; fences: readonly Fence[] } & Record<string, unknown> {
    return {
      pid: process.pid,
      startedAt: this.#startedAt,
      listeners: Object.fromEntries([...this.addresses].map(([n, a]) => [n, `${a.address}:${a.port}`])),
      policyServices: Object.fromEntries(this.policyAddresses),
      processes: this.#children.map((c) => ({
        role: c.kind, index: c.index, pid: c.proc?.pid ?? null, ready: c.ready,
        ...(c.kind === 'worker' && this.#held.size ? { accepting: c.accepting, acceptTurns: c.acceptTurns, ...(c.full ? { full: true } : {}) } : {}),
        // It holds the counting lease (shared-counters.ts): the per-IP slots of what it accepts are counted there alone.
        ...(c.kind === 'worker' && this.#counters.leaseHolder === c.index ? { countsAlone: true } : {}),
        // startedAt is on the monotonic clock (for back-off): shown as the wall-clock time it stands for.
        startedAt: c.startedAt ? new Date(performance.timeOrigin + c.startedAt).toISOString() : null, restarts: c.restarts, lastExit: c.lastExit,
      })),
      fences: this.#fences.fences,
      reload: this.#reloads.status(),
    };
  }

  /** Writes are queued: two at once into the one temporary file could leave a torn file behind. */
  #saveStatus(): Promise<void> {
    this.#saving = this.#saving.then(async () => {
      // Not through a fixed temporary name: in a data directory others may write, a link planted there was written through.
      await writeFileAtomic(clusterStatusFile(this.config.config.dataDir), `${JSON.stringify(this.status(), null, 2)}\n`, 0o600, { durable: false }).catch(() => undefined);
    });
    return this.#saving;
  }
}
