/**
 * Assembles a running server from a configuration: the policy generation, the spool, one smtp-server
 * per listener. Returns a handle to stop it. The CLI and the tests both start Postern through here.
 */
import { parseConfig, loadConfigFile, type LoadedConfig } from '../config/load-config.ts';
import { DEFAULT_CONFIG_YAML } from '../config/default-config.ts';
import { PolicyGeneration } from '../policy/generation.ts';
import { Spool } from '../spool/spool.ts';
import { acquireDirectoryLock } from '../spool/data-dir-lock.ts';
import { AuthFailureLimiter } from '../auth/failure-limiter.ts';
import { createStore, type CounterStore } from '../store/index.ts';
import { PosternServer } from '../smtp/postern-server.ts';
import { prepareListener } from '../smtp/listener-options.ts';
import type { Runtime } from '../smtp/runtime.ts';
import { createLogger, type Logger } from '../logging/logger.ts';
import { join } from 'node:path';
import { Reloader } from '../reload/reloader.ts';
import { QueueRunner } from '../queue/runner.ts';
import { ConfigError } from '../config/config-error.ts';
import { checkOutboundTls } from '../delivery/outbound-tls.ts';
import type { DeliveryResolver } from '../delivery/dns.ts';
import { startAdminServer, type AdminServer } from '../admin/admin-server.ts';
import { metrics, setQueueProbe } from '../metrics/metrics.ts';
import { access, constants } from 'node:fs/promises';

export interface StartOptions {
  /** Path of postern.yaml; omitted: the embedded default, relative to `cwd`. */
  configPath?: string;
  /** Configuration text instead of a file (tests). */
  configText?: string;
  baseDir?: string;
  logger?: Logger;
  /** Called before listeners start, e.g. to create the development PKI. */
  prepare?(config: LoadedConfig): Promise<void>;
  /** Watch the inputs and reload on change (default true). */
  watch?: boolean;
  /** Quiet time after the last file event before reloading (default 50 ms). */
  settleMs?: number;
  /** DNS for delivery routing (tests); default node:dns per delivery.hostLookup and dnsServers. */
  resolver?: DeliveryResolver;
  /** Directory locked for the server's life (default: dataDir); false when the caller holds the lock (a supervisor). */
  lockDir?: string | false;
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
  readonly reloader: Reloader;
  /** Delivers the spool (idle while delivery.enabled is false). */
  readonly queue: QueueRunner;
  /** The admin listener (metrics, health, status), when `admin.listen` is set. */
  readonly admin: AdminServer | null;
  close(): Promise<void>;
}

/** Postfix's words for a recipient's outcome: status=sent|deferred|bounced. */
const OUTCOME_RESULT = { delivered: 'sent', temporary: 'deferred', permanent: 'bounced' } as const;

export function loadStartConfig(opts: StartOptions): LoadedConfig {
  if (opts.configText !== undefined) return parseConfig(opts.configText, opts.configPath ?? '(inline)', opts.baseDir ?? process.cwd());
  if (opts.configPath) return loadConfigFile(opts.configPath);
  return parseConfig(DEFAULT_CONFIG_YAML, '(embedded default)', opts.baseDir ?? process.cwd());
}

class MutableRuntime implements Runtime {
  generation: PolicyGeneration;
  readonly spool: Spool;
  readonly logger: Logger;
  readonly authFailures: AuthFailureLimiter;
  onSpooled?: (id: string) => void;
  constructor(generation: PolicyGeneration, spool: Spool, logger: Logger, authFailures: AuthFailureLimiter) {
    this.generation = generation;
    this.spool = spool;
    this.logger = logger;
    this.authFailures = authFailures;
  }
}

export async function startPostern(opts: StartOptions = {}): Promise<RunningPostern> {
  const loaded = loadStartConfig(opts);
  // One server per data directory: a second one would take the first's half-received messages for a crash's.
  const lock = opts.lockDir === false ? { release() {} } : acquireDirectoryLock(opts.lockDir ?? loaded.config.dataDir);
  try {
    const running = await startWithDataDir(opts, loaded);
    return { ...running, close: () => running.close().finally(() => lock.release()) };
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
  const store = given ? opts.memoryStore! : createStore(config.store, logger);
  const closeStore = (): Promise<void> => (given ? Promise.resolve() : store.close());
  let generation: PolicyGeneration;
  try {
    generation = await PolicyGeneration.build(loaded, logger, store);
  } catch (err) {
    await closeStore();
    throw err;
  }
  /** Every generation this server made that may still have isolates: all are disposed at close(). */
  const generations = new Set([generation]);
  const outbound = await checkOutboundTls(config.delivery);
  if (outbound.errors.length) {
    await generation.dispose();
    await closeStore();
    // Each line is already "<file>: <key>: <problem>".
    throw new ConfigError(outbound.errors.map((line) => ({ file: line.slice(0, line.indexOf(': ')), message: line.slice(line.indexOf(': ') + 2) })));
  }
  for (const w of [...outbound.problems, ...outbound.warnings]) logger.warn(w);
  const spool = new Spool(join(config.dataDir, 'spool'));
  const { removedOrphans } = await spool.init({ logger });
  if (removedOrphans) logger.warn({ removedOrphans }, 'removed unacknowledged spool files');
  const windowMs = Math.max(...config.listeners.map((l) => l.limits.authFailureWindowMs));
  const runtime = new MutableRuntime(generation.acquire(), spool, logger, new AuthFailureLimiter(windowMs, store.authFailures()));

  const servers = new Map<string, PosternServer>();
  const reported = new WeakSet<Error>();
  const addresses = new Map<string, { address: string; port: number }>();
  try {
    for (const l of config.listeners) {
      const server = new PosternServer(runtime, await prepareListener(l, config.hostname, logger));
      server.on('error', (err: Error & { remoteAddress?: string; code?: string; reason?: string }) => {
        // smtp-server also reports each client's connection errors here (a failed handshake, a reset):
        // the client's fault, logged at info with its reason, not as a server error with a stack trace.
        if (reported.has(err)) return; // one failure reaches here from the TCP socket and from TLS over it
        reported.add(err);
        if (err.remoteAddress && (err as { library?: string }).library === 'SSL routines') metrics.tlsHandshakeFailures.inc({ listener: l.name });
        if (err.remoteAddress) logger.info({ listener: l.name, client: err.remoteAddress, clientError: { message: err.message.trim(), code: err.code, reason: err.reason } }, 'client connection error');
        else logger.error({ listener: l.name, err }, 'listener error');
      });
      const sep = l.listen.lastIndexOf(':');
      const host = l.listen.slice(0, sep).replace(/^\[|\]$/g, '');
      const port = Number(l.listen.slice(sep + 1));
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => reject(new Error(`listener ${l.name}: cannot listen on ${l.listen}: ${err.message}`));
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
  } catch (err) {
    await Promise.all([...servers.values()].map((s) => new Promise<void>((r) => s.close(() => r()))));
    await generation.dispose();
    await closeStore();
    throw err;
  }

  const queue = new QueueRunner({ spool, generation: () => runtime.generation, logger, resolver: opts.resolver });
  const reloader = new Reloader({
    current: () => runtime.generation,
    swap(next) {
      generations.add(next);
      // Forget the ones already let go, once torn down (a reload a day must not accumulate them).
      for (const g of generations) if (g.disposed) void g.teardown.then(() => generations.delete(g));
      const old = runtime.generation;
      runtime.generation = next.acquire();
      old.release();
      old.retire();
      queue.reconfigured();
    },
    servers,
    logger,
  }, {
    configPath: opts.configText === undefined ? loaded.file.startsWith('(') ? undefined : loaded.file : undefined,
    configText: opts.configText ?? (loaded.file === '(embedded default)' ? DEFAULT_CONFIG_YAML : undefined),
    baseDir: loaded.baseDir,
    label: loaded.file,
  }, opts.settleMs);
  if (opts.watch ?? true) await reloader.start();

  runtime.onSpooled = (id) => queue.notify(id);
  queue.start();

  metrics.generation.set(runtime.generation.serial);
  reloader.onReload((o) => {
    metrics.reloads.inc({ result: o.ok ? 'ok' : 'failed' });
    metrics.lastReloadFailed.set(o.ok ? 0 : 1);
    metrics.generation.set(runtime.generation.serial);
  });
  queue.onAttempt((e) => {
    for (const o of e.outcomes) metrics.deliveries.inc({ result: OUTCOME_RESULT[o.status], next_hop: o.remoteMta ?? 'none' });
    if (e.bounceId) metrics.bounces.inc();
  });
  setQueueProbe(async () => {
    const ids = await spool.list();
    const oldest = ids.reduce((min, id) => Math.min(min, Spool.idTime(id)), Infinity);
    return { messages: ids.length, oldestAgeSeconds: ids.length ? Math.max(0, (Date.now() - oldest) / 1000) : 0 };
  });
  let admin: AdminServer | null = null;
  if (config.admin) {
    admin = await startAdminServer(config.admin.listen, {
      async readiness() {
        const spoolWritable = await access(join(config.dataDir, 'spool'), constants.W_OK).then(() => ({ ok: true }), (err: Error) => ({ ok: false, detail: err.message }));
        const unbound = [...servers].filter(([, s]) => !s.server.listening).map(([name]) => name);
        const lastError = reloader.status.data.lastError;
        return {
          listeners: unbound.length ? { ok: false, detail: `not listening: ${unbound.join(', ')}` } : { ok: true },
          spool: spoolWritable,
          reload: lastError ? { ok: false, detail: lastError.join('; ') } : { ok: true },
        };
      },
      async status() {
        return {
          ...reloader.status.data,
          listeners: Object.fromEntries([...addresses].map(([name, a]) => [name, `${a.address}:${a.port}`])),
          queue: { active: queue.activeCount, messages: (await spool.list()).length },
        };
      },
    });
    logger.info({ address: `${admin.address.address}:${admin.address.port}` }, 'admin listener: /metrics /healthz /readyz /status');
  }

  return {
    runtime, config: loaded, addresses, servers, reloader, queue, admin,
    async close() {
      await admin?.close();
      await reloader.close();
      await Promise.all([...servers.values()].map((s) => new Promise<void>((r) => s.close(() => r()))));
      await queue.close();
      spool.close();
      const generation = runtime.generation;
      generation.release();
      generation.retire();
      // Every generation of this server goes now, also one a lingering session or the queue still holds
      // (its script calls then fail closed): isolated-vm may abort a process that exits with isolates alive
      // or still being torn down.
      await Promise.all([...generations].map((g) => g.dispose()));
      await closeStore();
    },
  };
}
