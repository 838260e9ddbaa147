/**
 * Hot reload: on a settled change (or SIGHUP) re-read the configuration and everything it names, build
 * and validate a new generation beside the running one, and only then swap it in. Any failure keeps the
 * running generation and is reported (log with file:line:col, counter, status file). Reloads never
 * overlap; a change during a reload triggers one more afterwards.
 */
import { loadConfigFile, parseConfig, type LoadedConfig } from '../config/load-config.ts';
import { ConfigError } from '../config/config-error.ts';
import { PolicyGeneration } from '../policy/generation.ts';
import { prepareListener } from '../smtp/listener-options.ts';
import { checkOutboundTls } from '../delivery/outbound-tls.ts';
import type { ListenerSetup, PosternServer } from '../smtp/postern-server.ts';
import type { Logger } from '../logging/logger.ts';
import { ChangeWatcher } from './change-watcher.ts';
import { digestInputs, watchedInputs } from './watched-inputs.ts';
import { ReloadStatus } from './reload-status.ts';

/** What the reloader may change in a running server. */
export interface ReloadTarget {
  current(): PolicyGeneration;
  swap(next: PolicyGeneration): void;
  servers: ReadonlyMap<string, PosternServer>;
  logger: Logger;
}

export interface ReloadOutcome {
  changed: boolean;
  ok: boolean;
  errors: string[];
  pendingRestart: string[];
  /** Milliseconds from the start of the reload to the swap. */
  ms: number;
}

export class Reloader {
  readonly status: ReloadStatus;
  readonly #target: ReloadTarget;
  readonly #source: { configPath?: string; configText?: string; baseDir: string; label: string };
  readonly #watcher: ChangeWatcher;
  #digest = '';
  /** Content of the last refused reload, so it is not rebuilt until it changes. */
  #failedDigest: string | null = null;
  #running: Promise<ReloadOutcome> | null = null;
  #again = false;
  #listeners = new Set<(o: ReloadOutcome) => void>();

  constructor(target: ReloadTarget, source: { configPath?: string; configText?: string; baseDir: string; label: string }, settleMs = 50) {
    this.#target = target;
    this.#source = source;
    const gen = target.current();
    this.status = new ReloadStatus(gen.config.dataDir, gen.serial);
    this.#watcher = new ChangeWatcher(settleMs, () => void this.reload('change'));
  }

  async start(): Promise<void> {
    const inputs = watchedInputs(this.#target.current().source);
    this.#digest = await digestInputs(inputs);
    await this.#watcher.watch(inputs);
    await this.status.save();
  }

  /** Called after every reload attempt that found a change (tests wait on it). */
  onReload(fn: (o: ReloadOutcome) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** Reload now (SIGHUP, file change). Concurrent calls coalesce into at most one more run. */
  reload(reason: string): Promise<ReloadOutcome> {
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = this.#reloadOnce(reason).finally(() => {
      this.#running = null;
      if (this.#again) {
        this.#again = false;
        void this.reload(reason);
      }
    });
    return this.#running;
  }

  async #reloadOnce(reason: string): Promise<ReloadOutcome> {
    const t0 = performance.now();
    const log = this.#target.logger.child({ component: 'reload' });
    // Compare what the running generation was built from; unchanged content is not a reload.
    const before = await digestInputs(watchedInputs(this.#target.current().source));
    const forced = reason === 'SIGHUP';
    if (!forced && before === this.#digest) {
      if (this.#failedDigest === null) return { changed: false, ok: true, errors: [], pendingRestart: [], ms: 0 };
      // A broken edit was undone: the running generation is right again.
      this.#failedDigest = null;
      await this.status.succeeded(this.#target.current().serial, []);
      return this.#emit({ changed: false, ok: true, errors: [], pendingRestart: [], ms: performance.now() - t0 });
    }
    if (!forced && before === this.#failedDigest) return { changed: false, ok: false, errors: [], pendingRestart: [], ms: 0 };

    let loaded: LoadedConfig;
    let next: PolicyGeneration;
    const setups = new Map<string, ListenerSetup>();
    try {
      loaded = this.#loadConfig();
      await this.#watcher.watch(watchedInputs(loaded)); // new tables or script folders are watched from now on
      next = await PolicyGeneration.build(loaded, this.#target.logger);
    } catch (err) {
      this.#failedDigest = before;
      return this.#fail(t0, errorLines(err), log, reason);
    }
    try {
      for (const l of loaded.config.listeners) {
        if (this.#target.servers.has(l.name)) setups.set(l.name, await prepareListener(l, loaded.config.hostname, this.#target.logger));
      }
      // Outbound certificates are part of the configuration too: a half-rotated key pair is refused like a listener's.
      const outbound = await checkOutboundTls(loaded.config.delivery);
      if (outbound.errors.length) throw Object.assign(new Error(outbound.errors.join('\n')), { errors: outbound.errors });
      for (const w of [...outbound.problems, ...outbound.warnings]) log.warn(w);
    } catch (err) {
      await next.dispose();
      this.#failedDigest = before;
      return this.#fail(t0, errorLines(err), log, reason);
    }
    const pendingRestart = this.#restartNeeded(loaded);
    // Swap: new sessions (and new transactions) take the new generation; TLS changes apply to new handshakes.
    this.#target.swap(next);
    for (const [name, setup] of setups) applyListenerSetup(this.#target.servers.get(name)!, setup);
    this.#digest = await digestInputs(watchedInputs(loaded));
    this.#failedDigest = null;
    const ms = performance.now() - t0;
    for (const p of pendingRestart) log.warn({ change: p }, `configuration change needs a restart: ${p}`);
    log.info({ generation: next.serial, reason, ms: Math.round(ms) }, 'reloaded');
    await this.status.succeeded(next.serial, pendingRestart);
    return this.#emit({ changed: true, ok: true, errors: [], pendingRestart, ms });
  }

  #emit(outcome: ReloadOutcome): ReloadOutcome {
    for (const fn of this.#listeners) fn(outcome);
    return outcome;
  }

  #loadConfig(): LoadedConfig {
    const s = this.#source;
    if (s.configPath && s.configText === undefined) return loadConfigFile(s.configPath);
    return parseConfig(s.configText ?? '', s.label, s.baseDir);
  }

  /** Listener changes that cannot be applied live. */
  #restartNeeded(loaded: LoadedConfig): string[] {
    const running = this.#target.current().config.listeners;
    const out: string[] = [];
    for (const l of loaded.config.listeners) {
      const old = running.find((r) => r.name === l.name);
      if (!old) out.push(`new listener ${l.name} (${l.listen})`);
      else if (old.listen !== l.listen) out.push(`listener ${l.name} moves from ${old.listen} to ${l.listen}`);
      else if (old.tls.mode !== l.tls.mode) out.push(`listener ${l.name} changes tls.mode ${old.tls.mode} → ${l.tls.mode}`);
    }
    for (const r of running) if (!loaded.config.listeners.some((l) => l.name === r.name)) out.push(`listener ${r.name} removed`);
    return out;
  }

  async #fail(t0: number, errors: string[], log: Logger, reason: string): Promise<ReloadOutcome> {
    for (const e of errors) log.error({ reason }, `reload refused, keeping generation ${this.#target.current().serial}: ${e}`);
    await this.status.failed(errors);
    return this.#emit({ changed: true, ok: false, errors, pendingRestart: [], ms: performance.now() - t0 });
  }

  async close(): Promise<void> {
    await this.#watcher.close();
    await this.#running?.catch(() => undefined);
  }
}

/** New handshakes use the new certificate, key, CA and CRL; limits apply to new connections. */
function applyListenerSetup(server: PosternServer, setup: ListenerSetup): void {
  server.updateSecureContext(setup.options as Parameters<PosternServer['updateSecureContext']>[0]);
  server.trust = setup.trust;
  server.greetingDelayMs = setup.greetingDelayMs;
  server.maxConnectionsPerIp = setup.maxConnectionsPerIp;
  server.tlsHandshakeTimeoutMs = setup.tlsHandshakeTimeoutMs;
}

function errorLines(err: unknown): string[] {
  if (err instanceof ConfigError) return err.message.split('\n');
  const e = err as { errors?: unknown[]; message?: string };
  if (Array.isArray(e.errors) && e.errors.length) return e.errors.map(String);
  return [err instanceof Error ? err.message : String(err)];
}
