/**
 * Assembles a running server from a configuration: the policy generation, the spool, one smtp-server
 * per listener. Returns a handle to stop it. The CLI and the tests both start Postern through here.
 */
import type { LoadedConfig } from '../config/load-config.ts';
import { loadStartConfig, type ConfigSource } from '../config/start-config.ts';
import { DEFAULT_CONFIG_YAML } from '../config/default-config.ts';
import { dataDirError } from '../config/data-dir-check.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import { buildGeneration } from '../generation/build-generation.ts';
import { Spool } from '../spool/spool.ts';
import { lockEvenWhenFull, reservePath } from '../spool/reserve.ts';
import { openToOthers, openToOthersWarning } from '../spool/data-dir-lock.ts';
import { AuthFailureLimiter, MemoryAuthFailureStore } from '../auth/failure-limiter.ts';
import { createStore, guessPlaces, type CounterStore } from '../store/index.ts';
import type { PosternServer } from '../smtp/postern-server.ts';
import type { Runtime } from '../smtp/runtime.ts';
import { parseAddressList } from '../delivery/address-list.ts';
import { createLogger, type Logger } from '../logging/logger.ts';
import { join } from 'node:path';
import { Reloader } from '../reload/reloader.ts';
import { digestInputs, watchedInputs } from '../reload/watched-inputs.ts';
import { keepRunning, longestAuthWindow, type RunningSettings } from '../reload/restart-needed.ts';
import type { QueueRunner } from '../queue/runner.ts';
import type { DeliveryResolver } from '../delivery/dns.ts';
import { adminLimits, startAdminServer, type AdminServer } from '../admin/admin-server.ts';
import { deliveryCounted, metrics, setAuthFailureProbe, setQueueProbe, setSpoolSyncProbe } from '../metrics/metrics.ts';
import { spoolConfirmsWrites, spoolWritable, unconfirmedSpools } from '../admin/spool-check.ts';
import { reloadCheck } from '../admin/reload-check.ts';
import { onlyListener, storeCheck } from '../admin/store-check.ts';
import type { Socket } from 'node:net';
import { SpoolSet, workerSpoolDir } from '../cluster/spool-set.ts';
import { shadowCounts } from '../shadow/shadow-status.ts';
import { startRecording } from '../replay/recorder.ts';
import { registry } from '../metrics/metrics.ts';
import type { ConnectionCounts, WorkerCounters } from '../cluster/shared-counters.ts';
// From their own files, not the index: it loads the CA's issuing and revoking code too, which a server never runs.
import { ExpiryWatch } from '../pki/expiry.ts';
import { SightingRecorder } from '../pki/sightings.ts';
import { deviceNames } from '../pki/locate.ts';
import type { AccountsServer } from '../accounts/server.ts';
import { createServer, type Server } from 'node:net';
import type { PolicyServer } from '../policy-service/policy-server.ts';
import { listenPolicyService, type BoundPolicyService } from '../policy-service/listen.ts';
import { privilegedPortHint } from '../config/privileged-ports.ts';

export interface StartOptions extends ConfigSource {
  logger?: Logger;
  /** Called before listeners start, e.g. to create the development PKI. */
  prepare?(config: LoadedConfig): Promise<void>;
  /** Watch the inputs and reload on change (default true). */
  watch?: boolean;
  /** Quiet time after the last file event before reloading (default 50 ms). */
  settleMs?: number;
  /** DNS for delivery routing (tests); default node:dns per delivery.hostLookup and dnsServers. */
  resolver?: DeliveryResolver;
  /** Directory locked for the server's life (default: dataDir; a supervisor's child: the spool it writes); false when the caller holds the lock. */
  lockDir?: string | false;
  /**
   * What this process is in the multi-process model (engine/cluster): 'single' (default) listens, spools
   * and delivers; a 'worker' serves connections the supervisor hands it (see acceptConnection) and spools
   * into its own folder; the 'queue' process delivers every spool and listens on nothing.
   */
  role?: 'single' | 'worker' | 'queue';
  /**
   * A process the supervisor starts: the data directory, logger, store and auth-failure window the server runs
   * with (they need a restart to change), which the file may no longer say.
   */
  running?: RunningSettings;
  /** A worker's number: its spool is <dataDir>/spool/worker-<n>. */
  workerIndex?: number;
  /** The queue process: how many workers the server runs (spools of workers beyond them are written by none). */
  workers?: number;
  /** A worker's counters shared with the other workers through the supervisor. */
  counters?: WorkerCounters;
  /** A worker: a message was committed to its spool (tell the queue process). */
  onSpooled?(id: string, spoolDir: string): void;
  /**
   * The counter store when the configuration has no `store.redis`, e.g. a worker's store that forwards to its
   * supervisor's memory (so all workers count together); the caller closes it. Default: this process's memory.
   */
  memoryStore?: CounterStore;
}

export interface RunningPostern {
  readonly runtime: Runtime;
  readonly config: LoadedConfig;
  /** Bound address of each listener by name (port 0 in the config picks a free port). */
  readonly addresses: ReadonlyMap<string, { address: string; port: number }>;
  readonly servers: ReadonlyMap<string, PosternServer>;
  /** Postfix policy services by name, and where each listens (`address:port` or `unix:/path`). */
  readonly policyServers: ReadonlyMap<string, PolicyServer>;
  readonly policyAddresses: ReadonlyMap<string, string>;
  readonly reloader: Reloader;
  /** Delivers the spool (idle while delivery.enabled is false); null in a worker, which delivers nothing. */
  readonly queue: QueueRunner | null;
  /** The admin listener (metrics, health, status), when `admin.listen` is set. */
  readonly admin: AdminServer | null;
  /** Every spool this server delivers from (the queue runner's view). */
  readonly spools: SpoolSet;
  /** The counter store (`store`): a worker tells the supervisor when its Redis is unreachable (readiness). */
  readonly store: CounterStore;
  /** The account page (`accounts`), in the single server or the queue process; null otherwise. */
  readonly accounts: AccountsServer | null;
  /** Client certificates seen (not in the queue process), and the expiry watch (not in a worker). */
  readonly certificates: { sightings: SightingRecorder | null; expiry: ExpiryWatch | null };
  /**
   * A worker: serve a connection the supervisor accepted on `listener`'s socket. A listener this process does not
   * have (a reload removed it, and this worker started after that edit) gets the 421 the others give it.
   */
  acceptConnection(listener: string, socket: Socket): void;
  /**
   * A worker: serve a connection the supervisor accepted on policy service `service`'s socket; `open`: its
   * connections over all workers, this one included (its maxConnections). One this process does not have is closed.
   */
  acceptPolicyConnection(service: string, socket: Socket, open?: number): void;
  /** A worker accepted `socket` itself on the listener's socket the supervisor holds: its slot is taken by round trip. */
  acceptOwnConnection(listener: string, socket: Socket): void;
  /**
   * `endsWithSignal`: the caller ends the process with SIGKILL once this resolves (its sandbox cannot recover):
   * the isolates are disposed, but their teardown (up to seconds, for one a stuck thread never leaves) is not
   * waited for — the process was going to skip it anyway, and its replacement waits for this process's spool.
   */
  close(opts?: { endsWithSignal?: boolean }): Promise<void>;
}

/** Postfix's words for a recipient's outcome: status=sent|deferred|bounced. */
const OUTCOME_RESULT = { delivered: 'sent', temporary: 'deferred', permanent: 'bounced' } as const;

/**
 * A worker's journal is read by the queue process, which reopens it (reading every segment) when it meets
 * a message its view does not know yet: small segments keep that cheap (measured: 40 ms for a full 32 MiB
 * segment, about 5 ms at 4 MiB), and finished ones are deleted sooner.
 */
const WORKER_SEGMENT_BYTES = 4 * 1024 * 1024;

class MutableRuntime implements Runtime {
  generation: PolicyGeneration;
  readonly spool: Spool;
  readonly logger: Logger;
  readonly authFailures: AuthFailureLimiter;
  readonly connections: ConnectionCounts | undefined;
  sightings?: SightingRecorder;
  readonly parseAddressList = parseAddressList;
  onSpooled?: (id: string) => void;
  constructor(generation: PolicyGeneration, spool: Spool, logger: Logger, authFailures: AuthFailureLimiter, connections?: ConnectionCounts) {
    this.generation = generation;
    this.spool = spool;
    this.logger = logger;
    this.authFailures = authFailures;
    this.connections = connections;
  }
}

export async function startPostern(opts: StartOptions = {}): Promise<RunningPostern> {
  const loaded = loadStartConfig(opts);
  if (opts.running) keepRunning(loaded.config, opts.running);
  // Refused as `postern check` refuses it (a child of `postern serve`, lockDir false: its supervisor asked).
  const unusable = opts.lockDir === false ? null : await dataDirError(loaded, { starting: true });
  if (unusable) throw unusable;
  // One server per data directory: a second one would take the first's half-received messages for a crash's.
  const taken = opts.lockDir === false ? { lock: { release() {} }, released: false } : lockEvenWhenFull(opts.lockDir ?? loaded.config.dataDir, loaded.config.dataDir);
  // A single process delivers the spool as the queue process of `postern serve` does, so it takes that process's
  // lock too: a queue process whose supervisor was killed still holds it while it ends its deliveries (both would
  // deliver the same messages).
  let spoolLock: { release(): void } | null = null;
  try {
    if (opts.lockDir === undefined) spoolLock = lockEvenWhenFull(join(loaded.config.dataDir, 'spool'), loaded.config.dataDir).lock;
  } catch (err) {
    taken.lock.release();
    throw err;
  }
  const released = taken.released;
  const lock = { release: () => { spoolLock?.release(); taken.lock.release(); } };
  try {
    const running = await startWithDataDir(opts, loaded);
    if (released) running.runtime.logger.error({ reserve: reservePath(loaded.config.dataDir) }, 'spool: the disk is full: the reserve is released so that this process could start; new mail is refused (452 4.3.1) until there is room again');
    // A process of `postern serve` (its own lockDir): its supervisor says it.
    const open = opts.lockDir === undefined ? openToOthers(loaded.config.dataDir) : null;
    if (open) running.runtime.logger.warn({ dataDir: loaded.config.dataDir }, openToOthersWarning(loaded.config.dataDir, open));
    if (opts.lockDir === undefined) running.reloader.readableSecrets.say(loaded, running.runtime.logger);
    return { ...running, close: (o) => running.close(o).finally(() => lock.release()) };
  } catch (err) {
    lock.release();
    throw err;
  }
}

async function startWithDataDir(opts: StartOptions, loaded: LoadedConfig): Promise<RunningPostern> {
  const config = loaded.config;
  const logger = opts.logger ?? createLogger(config.log.level, undefined, config.log.format);
  await opts.prepare?.(loaded);
  // One counter store for the server's life (a reload that changes `store` waits for a restart).
  const given = !config.store.redis && opts.memoryStore;
  const store = given ? opts.memoryStore! : await createStore(config.store, logger, { sayEviction: opts.role !== 'worker' });
  const closeStore = (): Promise<void> => (given ? Promise.resolve() : store.close());
  // The reload's and `postern check`'s build: every problem at once, as one ConfigError.
  let built: Awaited<ReturnType<typeof buildGeneration>>;
  // What the first generation is built from: the configuration as parsed, the other inputs before the build reads
  // them. Taken from the disk once it runs, an edit made meanwhile (seconds, with isolates) was never applied.
  const builtFrom = await contentRead(loaded);
  try {
    built = await buildGeneration(loaded, { logger, store });
  } catch (err) {
    await closeStore();
    throw err;
  }
  const generation = built.generation;
  /** Every generation this server made that may still have isolates: all are disposed at close(). */
  const generations = new Set([generation]);
  const role = opts.role ?? 'single';
  // Under postern serve the supervisor says them, once for the server (the state each process sends it holds them).
  if (role === 'single') for (const w of built.warnings) logger.warn(w.listener ? { listener: w.listener } : {}, w.message);
  const home = new Spool(join(config.dataDir, 'spool'));
  const spool = role === 'worker' ? new Spool(workerSpoolDir(config.dataDir, opts.workerIndex ?? 0), { journalSegmentBytes: WORKER_SEGMENT_BYTES, reserve: home.reserve.path }) : home;
  // spool.syncDeadlineMs: read at each sync, so a reload changes it for the next ones (swap() below).
  const takeSyncDeadline = (ms: number): void => { spool.syncDeadline.ms = ms; home.syncDeadline.ms = ms; };
  takeSyncDeadline(config.spool.syncDeadlineMs);
  setSpoolSyncProbe(() => spool.unconfirmedFor());
  const { removedOrphans } = await spool.init({ logger });
  if (removedOrphans) logger.warn({ removedOrphans }, 'removed unacknowledged spool files');
  // The process that delivers reports the damage in spools no worker of this server writes (a single process: all of them).
  const spools = new SpoolSet(home, role === 'worker' ? undefined : { workers: role === 'queue' ? opts.workers ?? 0 : 0, logger });
  const windowMs = opts.running?.authFailureWindowMs ?? longestAuthWindow(config);
  // Auth failures count where the limit must hold: in Redis across machines; else across this server's
  // worker processes (through the supervisor); else in this process.
  // Without Redis the failures are each process's list, relayed; the places of guesses being decided are counted
  // in the supervisor's store (guess-places.ts), so parallel guesses to several workers stay within the limit.
  const failureStore = !config.store.redis && opts.counters
    ? new MemoryAuthFailureStore(opts.counters.failures, given ? guessPlaces(store) : undefined) : store.authFailures();
  const failures = new AuthFailureLimiter(windowMs, failureStore);
  if (failureStore instanceof MemoryAuthFailureStore) setAuthFailureProbe(() => failureStore.addresses);
  const runtime = new MutableRuntime(generation.acquire(), spool, logger, failures, opts.counters);
  // Each process that serves connections keeps its own sightings file; one process per server watches expiry.
  const sightings = role === 'queue' ? null : new SightingRecorder(config.dataDir, role === 'worker' ? `worker-${opts.workerIndex ?? 0}` : 'single', {
    onError: (err) => logger.warn({ err: { message: (err as Error).message } }, 'client certificate sightings not written'),
    onWarning: (message) => logger.warn(message),
  });
  if (sightings) runtime.sightings = sightings;
  const expiry = role === 'worker' ? null : new ExpiryWatch({
    dataDir: config.dataDir, logger,
    warnDays: () => runtime.generation.config.pki.warnDays,
    names: () => deviceNames(runtime.generation.config),
    crlFiles: () => runtime.generation.config.listeners.flatMap((l) => l.tls.crlFiles),
  });
  expiry?.start();

  const servers = new Map<string, PosternServer>();
  const reported = new WeakSet<Error>();
  const addresses = new Map<string, { address: string; port: number }>();
  const policyServers = new Map<string, PolicyServer>();
  const policyAddresses = new Map<string, string>();
  const policySockets: BoundPolicyService[] = [];
  // The SMTP server (smtp-server and the session's modules) only where connections are served: the queue process
  // of `postern serve` has no listeners, and loading it there cost ~45 ms of CPU at each of its starts.
  const { PosternServer } = role === 'queue' ? { PosternServer: null } : await import('../smtp/postern-server.ts');
  const { refuseOnRemovedListener } = role === 'queue' ? { refuseOnRemovedListener: null } : await import('../smtp/removed-listener.ts');
  try {
    for (const l of PosternServer ? config.listeners : []) {
      const server = new PosternServer!(runtime, built.listeners.get(l.name)!);
      server.on('error', (err: Error & { remoteAddress?: string; code?: string; reason?: string; cid?: string; tlsHandshake?: boolean; starttls?: boolean }) => {
        // smtp-server also reports each client's connection errors here (a failed handshake, a reset):
        // the client's fault, logged at info with its reason, not as a server error with a stack trace.
        if (reported.has(err)) return; // one failure reaches here from the TCP socket and from TLS over it
        reported.add(err);
        // A client's TLS handshake failed (implicit TLS, STARTTLS) even when its address is gone: a client that reset
        // before the server accepted it or before the handshake began (a scanner, a plaintext client on port 465) has
        // none left to ask the kernel for (getpeername: ENOTCONN), and its failure read as the listener's own.
        const fromClient = !!err.remoteAddress || err.tlsHandshake === true || err.starttls === true;
        if (fromClient && handshakeFailed(err)) metrics.tlsHandshakeFailures.inc({ listener: l.name });
        if (fromClient) logger.info({ cid: err.cid, listener: l.name, ...handshakeDecision(err), client: err.remoteAddress || null, clientError: { message: err.message.trim(), code: err.code, reason: err.reason } }, 'client connection error');
        else logger.error({ listener: l.name, err }, 'listener error');
      });
      if (role === 'worker') { // the supervisor owns the listening socket
        servers.set(l.name, server);
        continue;
      }
      const sep = l.listen.lastIndexOf(':');
      const host = l.listen.slice(0, sep).replace(/^\[|\]$/g, '');
      const port = Number(l.listen.slice(sep + 1));
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => reject(new Error(`listener ${l.name}: cannot listen on ${l.listen}: ${err.message}${privilegedPortHint(l.listen, err)}`));
        server.server.once('error', onError);
        server.listen(port, host, () => {
          server.server.off('error', onError);
          resolve();
        });
      });
      const bound = server.server.address() as { address: string; port: number };
      addresses.set(l.name, { address: bound.address, port: bound.port });
      servers.set(l.name, server);
      logger.info({ listener: l.name, address: `${bound.address}:${bound.port}`, tls: l.tls.mode }, 'listening');
    }
    // Policy services answer in the workers like SMTP listeners (the supervisor hands their connections
    // over), so their scripts run with the same isolates, reloads and crash containment.
    // Loaded where one is configured: the queue process answers none, and most servers have none (~15 ms of CPU).
    const { PolicyServer } = role === 'queue' || !config.policyServices.length ? { PolicyServer: null } : await import('../policy-service/policy-server.ts');
    for (const p of PolicyServer ? config.policyServices : []) {
      const policy = new PolicyServer!(runtime, p);
      policyServers.set(p.name, policy);
      if (role === 'worker') continue;
      const bound = await listenPolicyService(p, createServer((socket) => policy.handle(socket)));
      policySockets.push(bound);
      policyAddresses.set(p.name, bound.address);
      logger.info({ policyService: p.name, address: bound.address }, 'policy service listening');
    }
  } catch (err) {
    expiry?.close();
    await Promise.all([...servers.values()].map((s) => new Promise<void>((r) => s.close(() => r()))));
    await Promise.all(policySockets.map((s) => new Promise<void>((r) => s.close(() => r()))));
    await generation.dispose();
    await closeStore();
    throw err;
  }

  // The queue runner and the delivery code (~30 modules: ~13 ms of CPU at each start) where mail is delivered: a
  // worker of `postern serve` spools, and the queue process delivers what it spooled.
  const { QueueRunner } = role === 'worker' ? { QueueRunner: null } : await import('../queue/runner.ts');
  const queue = QueueRunner && new QueueRunner({ spool: spools, generation: () => runtime.generation, logger, resolver: opts.resolver, operationsRoot: spools.root });
  const reloader = new Reloader({
    current: () => runtime.generation,
    swap(next) {
      generations.add(next);
      // Forget the ones already let go, once torn down (a reload a day must not accumulate them).
      for (const g of generations) if (g.disposed) void g.teardown.then(() => generations.delete(g));
      const old = runtime.generation;
      runtime.generation = next.acquire();
      takeSyncDeadline(next.config.spool.syncDeadlineMs);
      old.release();
      old.retire();
      queue?.reconfigured();
    },
    servers,
    logger,
  }, {
    configPath: opts.configText === undefined ? loaded.file.startsWith('(') ? undefined : loaded.file : undefined,
    configText: opts.configText ?? (loaded.file === '(embedded default)' ? DEFAULT_CONFIG_YAML : undefined),
    baseDir: loaded.baseDir,
    label: loaded.file,
  }, opts.settleMs);
  reloader.setupWarnings.took(built.warnings); // said above (single), or by the supervisor from the state sent it
  // Under the supervisor it watches once for all processes and tells them to reload (cluster/reload-coordinator.ts).
  if (opts.watch ?? true) await reloader.start({ watch: role === 'single', builtFrom });

  // Listeners' shadowScripts run beside the live scripts (engine/shadow/); nothing to do without any.
  // The queue process runs no listener's scripts: it starts without the shadow runner.
  const stopShadowing = role === 'queue' ? () => undefined : (await import('../shadow/shadow-runner.ts')).startShadowing(logger, () => runtime.generation.config.sandbox.isolates);
  // `replay:` records each script call for `postern replay` (engine/replay/); each call's generation says whether.
  const recording = startRecording(logger);

  let collector: NodeJS.Timeout | null = null;
  if (role === 'worker') {
    runtime.onSpooled = (id) => opts.onSpooled?.(id, spool.root);
    // The queue process marks this journal's messages done; reading those marks lets finished segments go.
    collector = setInterval(() => void spool.list().catch((err: unknown) => logger.warn({ err }, 'spool collection failed')), config.delivery.scanIntervalMs);
    collector.unref();
  } else {
    runtime.onSpooled = (id) => queue!.notify(id);
    queue!.start();
  }

  metrics.generation.set(runtime.generation.serial);
  reloader.onReload((o) => {
    metrics.reloads.inc({ result: o.ok ? 'ok' : 'failed' });
    metrics.lastReloadFailed.set(o.ok ? 0 : 1);
    metrics.generation.set(runtime.generation.serial);
  });
  queue?.onAttempt((e) => {
    for (const o of e.outcomes) deliveryCounted(OUTCOME_RESULT[o.status], o.remoteMta);
    if (e.bounceId) metrics.bounces.inc();
  });
  // Under `postern serve` the supervisor reads the queue for the gauges (it outlives a queue process that dies).
  if (role === 'single') setQueueProbe(() => spools.census());
  let admin: AdminServer | null = null;
  // One admin listener per server: under `postern serve` the supervisor runs it, summing its children's metrics.
  if (config.admin && role === 'single') {
    admin = await startAdminServer(config.admin.listen, {
      async readiness(listener) {
        const listeners = onlyListener(runtime.generation.config.listeners, listener);
        if (!listeners) return null;
        const unbound = [...servers].filter(([name, s]) => !s.server.listening && listeners.some((l) => l.name === name)).map(([name]) => name);
        const lastError = reloader.status.data.lastError;
        return {
          listeners: unbound.length ? { ok: false, detail: `not listening: ${unbound.join(', ')}` } : { ok: true },
          // The floors of the generation in force, as the sessions refuse mail by (a reload takes them: key-decisions.ts).
          spool: spoolConfirmsWrites(unconfirmedSpools([spool])) ?? await spoolWritable(config.dataDir, runtime.generation.config.spool),
          store: storeCheck(listeners, store.unreachable === true),
          reload: reloadCheck(lastError),
        };
      },
      async status() {
        return {
          ...reloader.status.data,
          listeners: Object.fromEntries([...addresses].map(([name, a]) => [name, `${a.address}:${a.port}`])),
          policyServices: Object.fromEntries([...policyServers].map(([name, p]) => [name, { address: policyAddresses.get(name), connections: p.connections }])),
          queue: { active: queue!.activeCount, ...await spools.census() },
          shadow: shadowCounts([await registry.getMetricsAsJSON()]),
        };
      },
    }, adminLimits(config.admin, logger, () => runtime.generation.config.hostname));
    logger.info({ address: `${admin.address.address}:${admin.address.port}` }, 'admin listener: /metrics /healthz /readyz /status');
  }

  let accounts: AccountsServer | null = null;
  const running: RunningPostern = {
    runtime, config: loaded, addresses, servers, policyServers, policyAddresses, reloader, queue, spools, admin, store, certificates: { sightings, expiry },
    get accounts() { return accounts; },
    acceptConnection(listener, socket) {
      const server = servers.get(listener);
      if (!server) return refuseOnRemovedListener!(logger, listener, socket);
      server.server.emit('connection', socket);
    },
    acceptPolicyConnection(service, socket, open) {
      const policy = policyServers.get(service);
      if (!policy) return void socket.destroy();
      policy.handle(socket, open);
    },
    acceptOwnConnection(listener, socket) {
      const server = servers.get(listener);
      if (!server) return refuseOnRemovedListener!(logger, listener, socket);
      server.acceptOwn(socket);
    },
    async close(closeOpts) {
      stopShadowing();
      await recording.stop();
      if (collector) clearInterval(collector);
      // The sessions are told first (421 to their next command, their grace time running), and the reload under way
      // finishes beside that: a build with slow top levels takes seconds, up to its deadline, and waiting for it
      // first served every session as if no stop had come, then left the drain less of the supervisor's 30 s.
      const sessionsEnded = Promise.all([...servers.values()].map((s) => new Promise<void>((r) => s.close(() => r()))));
      // The queue runner too starts nothing more from now: stopped only after the build, it sent mail that came due
      // meanwhile, each such delivery racing the supervisor's kill (a kill after the next hop's 250 sends it again).
      const queueClosed = queue?.close();
      for (const p of policyServers.values()) p.close();
      await admin?.close();
      await accounts?.close();
      await reloader.close();
      await sessionsEnded;
      await Promise.all(policySockets.map((s) => new Promise<void>((r) => s.close(() => r()))));
      await queueClosed;
      expiry?.close();
      await sightings?.close();
      spool.close();
      home.close();
      spools.close();
      const generation = runtime.generation;
      generation.release();
      generation.retire();
      // Every generation of this server goes now, also one a lingering session or the queue still holds
      // (its script calls then fail closed): isolated-vm may abort a process that exits with isolates alive
      // or still being torn down.
      const disposed = Promise.all([...generations].map((g) => g.dispose()));
      if (!closeOpts?.endsWithSignal) await disposed;
      await closeStore();
    },
  };
  // The account page: one per server, beside the queue (see docs/client-certificates.md § The account page
  // for why there). Sign-in failures count in the same limiter as SMTP AUTH; its TLS follows every reload.
  if (config.accounts && role !== 'worker') {
    try {
      // Loaded only here: workers, and servers without the page, never load the web framework.
      const { startAccountsServer } = await import('../accounts/server.ts');
      accounts = await startAccountsServer({ listen: config.accounts.listen, generation: () => runtime.generation, limiter: failures, logger });
    } catch (err) {
      await running.close();
      throw err;
    }
    reloader.onReload((o) => { if (o.ok && o.changed) void accounts?.reloaded(); });
  }
  return running;
}

/**
 * A client's TLS handshake that did not complete: refused by TLS, or not finished within
 * limits.tlsHandshakeTimeoutMs. Not a client that closed before it: a port check, or one that went away.
 */
/**
 * A TLS handshake that failed (implicit TLS, or after STARTTLS) or was cut off by limits.tlsHandshakeTimeoutMs ends the
 * session there, closed without a reply: its line has the fields of a decision (as the STARTTLS deadline's has), so
 * `jq 'select(.decision)'` finds every session that ended at a refusal or a failed step. None for another error.
 */
function handshakeDecision(err: Error & { code?: string; tlsHandshake?: boolean; starttls?: boolean }): object {
  const stage = err.tlsHandshake === true ? 'CONNECT' : err.starttls === true ? 'STARTTLS' : null;
  if (stage === null) return {};
  const handshake = stage === 'STARTTLS' ? 'the TLS handshake after STARTTLS' : 'the TLS handshake';
  const reason = err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? `limits.tlsHandshakeTimeoutMs: ${handshake} not completed (closed)` : `${handshake} failed (closed)`;
  return { decision: 'reject', stage, reason, reply: null };
}

function handshakeFailed(err: Error & { code?: string; library?: string; tlsHandshake?: boolean }): boolean {
  return err.library === 'SSL routines' || (err.tlsHandshake === true && err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT');
}

/** The digest (and each file's SHA-256) of the content `loaded` and what it names are built from now (Reloader.start). */
async function contentRead(loaded: LoadedConfig): Promise<{ digest: string; files: Map<string, string> }> {
  const asRead = new Map<string, Buffer>();
  if (loaded.text !== undefined && !loaded.file.startsWith('(')) asRead.set(loaded.file, Buffer.from(loaded.text, 'utf8'));
  const files = new Map<string, string>();
  return { digest: await digestInputs(watchedInputs(loaded), asRead, files), files };
}
