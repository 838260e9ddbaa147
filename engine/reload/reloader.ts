/**
 * Hot reload: on a settled change (or SIGHUP) re-read the configuration and everything it names, build
 * and validate a new generation beside the running one, and only then swap it in. Any failure keeps the
 * running generation and is reported (log with file:line:col, counter, status file). Reloads never
 * overlap (a build abandoned at its deadline goes on unobserved); a change during a reload triggers one
 * more afterwards.
 *
 * Whatever the timing, the generation in force converges to what is on disk:
 * - the content recorded as "in force" is the content the build read (the configuration text it parsed,
 *   the other inputs as they were before it read them), never the disk's content after the swap;
 * - a build during which an input changed is thrown away, not swapped in (it may have read a mix of old
 *   and new files), and the inputs are looked at again once they are quiet;
 * - a build has a deadline: one that never settles is reported as failed and does not hold up the next.
 *
 * Under `postern serve` the children do not watch: the supervisor watches once (engine/cluster/
 * reload-coordinator.ts) and asks every child to reload; each child answers with its state() and the
 * supervisor reports a refused build once, for all of them.
 */
import { ReadableSecretsReport } from '../config/readable-secrets.ts';
import { dirname, resolve } from 'node:path';
import { parseConfig, type LoadedConfig } from '../config/load-config.ts';
import type { Config } from '../config/schema.ts';
import { ConfigError } from '../config/config-error.ts';
import { readInputFile } from '../config/input-file.ts';
import { MAX_CONFIG_BYTES } from '../config/config-size.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import { buildGeneration, GenerationError, type GenerationWarning } from '../generation/build-generation.ts';
import { SetupWarnings } from './setup-warnings.ts';
import { keepRunning, restartNeeded, runningSettings, type RunningSettings } from './restart-needed.ts';
import type { ListenerSetup, PosternServer } from '../smtp/postern-server.ts';
import { certificateInForce } from '../smtp/certificate-in-force.ts';
import type { Logger } from '../logging/logger.ts';
import { ChangeWatcher, POLL_MS, describeSettling, settlingMessage } from './change-watcher.ts';
import { digestInputs, unionInputs, watchedInputs, type WatchedInputs } from './watched-inputs.ts';
import { ReloadStatus } from './reload-status.ts';
import { buildDeadlineMs, withDeadline } from './build-deadline.ts';
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
  /** An input changed while the build read it; it was thrown away and another follows once the inputs are quiet. */
  superseded?: boolean;
}

/** Settings for embedding and tests; production uses the defaults. */
export interface ReloaderTuning {
  /** Bound on one build; default from the configuration (buildDeadlineMs). */
  buildTimeoutMs?: number;
  /** Runs inside the build's deadline, after the new generation is built and before it is checked and swapped. */
  afterBuild?: () => Promise<void>;
}

/** A generation built and ready to swap in, with what the listeners need. */
interface Built {
  loaded: LoadedConfig;
  next: PolicyGeneration;
  /** Every listener of the new configuration; those running take theirs at the swap. */
  setups: ReadonlyMap<string, ListenerSetup>;
  warnings: readonly GenerationWarning[];
}

/** The outcome of a reload asked for once the server is stopping: nothing is read or written. */
const stopping = (): ReloadOutcome => ({ changed: false, ok: false, errors: ['the server is stopping'], pendingRestart: [], ms: 0 });

export class Reloader {
  readonly status: ReloadStatus;
  readonly tuning: ReloaderTuning = {};
  /** The secret files every local user can read, said at start and, when new, at a reload (a single process). */
  readonly readableSecrets = new ReadableSecretsReport();
  /** The setup warnings in force, and when each was said (setup-warnings.ts). */
  readonly setupWarnings = new SetupWarnings();
  /** The changes needing a restart said at the last successful reload (a single process's own line). */
  #restartsSaid = new Set<string>();
  readonly #target: ReloadTarget;
  readonly #source: { configPath?: string; configText?: string; baseDir: string; label: string };
  readonly #watcher: ChangeWatcher;
  /**
   * The configuration this process started with: what was bound and made once (sockets, store, data directory,
   * logger). A restart is pending for as long as the configuration in force differs from it there, however
   * many reloads came between (against the last generation, a second edit made a pending move look settled).
   */
  readonly #started: Config;
  /** What a generation keeps of #started whatever the file says (the data directory its replay files go to, …). */
  readonly #runsWith: RunningSettings;
  /** Digest of the content the generation in force was built from, and each input file's SHA-256 in it. */
  #digest = '';
  #files: Record<string, string> = {};
  /** The last refused content, so it is not rebuilt until it changes. */
  #failed: { inputs: WatchedInputs; digest: string } | null = null;
  #running: Promise<ReloadOutcome> | null = null;
  /** The run after the one under way, which calls made during it wait for. */
  #followUp: Promise<ReloadOutcome> | null = null;
  #againForced = false;
  #closing = false;
  /** Builds past their deadline that may still finish: what they made is disposed then. */
  #abandoned = new Set<Promise<unknown>>();
  #listeners = new Set<(o: ReloadOutcome) => void>();
  #activity = new Set<() => void>();
  /** Told to reload by someone who watches (the supervisor), rather than watching itself. */
  #external = false;

  constructor(target: ReloadTarget, source: { configPath?: string; configText?: string; baseDir: string; label: string }, settleMs = 50) {
    this.#target = target;
    this.#source = source;
    const gen = target.current();
    this.#started = gen.config;
    this.#runsWith = runningSettings(gen.config);
    this.status = new ReloadStatus(gen.config.dataDir, gen.serial);
    this.#watcher = new ChangeWatcher(settleMs, () => void this.reload('change'), () => this.#notify(), (reason) => {
      this.status.data.watching = reason;
      void this.status.save();
      target.logger.child({ component: 'reload' }).error({ reason },
        `file changes are not watched (${reason}): the inputs are looked at every ${POLL_MS / 1000} s instead; SIGHUP reloads at once`);
    }, (files) => {
      const log = target.logger.child({ component: 'reload' });
      const began = this.status.data.settling === null;
      this.status.data.settling = files.length ? describeSettling(files) : null;
      void this.status.save();
      if (files.length) log[began ? 'info' : 'debug']({ settling: this.status.data.settling }, settlingMessage(files));
      else log.debug('the inputs waited for are settled');
    });
  }

  /**
   * `watch: false`: reload only when told (reload()); failures are then logged at debug level, the teller reports them.
   * `builtFrom`: the content the generation in force was built from, taken before its build read it; when the disk
   * differs now (an input changed while it was built), a reload follows at once.
   */
  async start({ watch = true, builtFrom }: { watch?: boolean; builtFrom?: { digest: string; files: ReadonlyMap<string, string> } } = {}): Promise<void> {
    const inputs = watchedInputs(this.#target.current().source);
    this.#external = !watch;
    // Watch first: a change made while the digest is taken is then seen as an event.
    if (watch) await this.#watcher.watch(inputs);
    const files = new Map<string, string>();
    const onDisk = await digestInputs(inputs, new Map(), files);
    this.#digest = builtFrom?.digest ?? onDisk;
    this.#files = Object.fromEntries(builtFrom?.files ?? files);
    await this.status.save();
    if (this.#digest !== onDisk) void this.reload('change');
  }

  /** What the generation in force was built from, and the last refused content and its errors (for the supervisor). */
  /** `files`: each input file's SHA-256 (or why it could not be read) in the content of the generation in force. */
  /** `checks` and `supersededBuilds`: the reloads begun, and those thrown away for a newer one (`postern reload` waits on them). */
  /** `warnings`: those of the generation in force, for the supervisor to say (each once for the server). */
  /** `pid`: this process, for `postern reload` to tell a replacement from the process it counted. */
  state(): { pid: number; generation: number; digest: string; refused: string | null; lastError: string[] | null; reloads: number; checks: number; supersededBuilds: number; files: Record<string, string>; warnings: GenerationWarning[] } {
    const { lastError, reloads, checks, supersededBuilds } = this.status.data;
    return {
      pid: process.pid, generation: this.#target.current().serial, digest: this.#digest, refused: this.#failed?.digest ?? null, lastError, reloads, checks, supersededBuilds,
      files: this.#files, warnings: [...this.setupWarnings.inForce],
    };
  }

  /** Called after every reload attempt that found a change (tests wait on it). */
  onReload(fn: (o: ReloadOutcome) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** Events about inputs, and about other files in the watched folders (ignored), seen so far; polls of the inputs finished. */
  get watchEvents(): { inputs: number; others: number; polls: number } {
    return { inputs: this.#watcher.inputEvents, others: this.#watcher.otherEvents, polls: this.#watcher.polls };
  }

  /**
   * Settles once there is nothing left to do: no build running or due, and the inputs on disk are the ones
   * the generation in force was built from (or the last refused ones, whose error status reports). A lost
   * event keeps it waiting, which is the point: it is how tests see that no edit goes unapplied.
   */
  async whenIdle(): Promise<void> {
    for (;;) {
      const activity = new Promise<void>((resolve) => this.#activity.add(resolve));
      if (this.#quiet() && await this.#upToDate() && this.#quiet()) return;
      await activity;
    }
  }

  #quiet(): boolean {
    return !this.#running && !this.#followUp && !this.#watcher.pending;
  }

  async #upToDate(): Promise<boolean> {
    if (this.#failed) return (await digestInputs(this.#failed.inputs)) === this.#failed.digest;
    return (await digestInputs(watchedInputs(this.#target.current().source))) === this.#digest;
  }

  #notify(): void {
    const waiting = [...this.#activity];
    this.#activity.clear();
    for (const fn of waiting) fn();
  }

  /**
   * Reload now (SIGHUP, file change). Calls during a run coalesce into one more run after it, and get that
   * run's outcome: the run under way may have read the inputs before the caller's edit, so its "ok" would
   * tell the caller of a content that is not theirs.
   */
  reload(reason: string): Promise<ReloadOutcome> {
    // Told once the stop began (the supervisor's check at ready may arrive after SIGTERM): its status write would outlive close().
    if (this.#closing) return Promise.resolve(stopping());
    if (this.#running) {
      if (reason === 'SIGHUP') this.#againForced = true;
      this.#followUp ??= this.#running.then(() => undefined, () => undefined).then(() => {
        const forced = this.#againForced;
        this.#againForced = false;
        this.#followUp = null;
        if (this.#closing) return stopping();
        return this.reload(forced ? 'SIGHUP' : 'change');
      });
      return this.#followUp;
    }
    this.#running = this.#reloadOnce(reason).finally(() => {
      this.#running = null;
      this.#notify();
    });
    this.#notify();
    return this.#running;
  }

  async #reloadOnce(reason: string): Promise<ReloadOutcome> {
    const t0 = performance.now();
    const log = this.#target.logger.child({ component: 'reload' });
    this.status.data.checks++;
    void this.status.save();
    try {
      return await this.#compareAndAttempt(reason, t0, log);
    } catch (err) {
      // Nothing after the swap throws (#attempt): this failed before it, with the running generation in force. Refused
      // and said so (status, the supervisor's view), not a rejection that a worker's supervisor never hears of.
      return this.#fail(t0, errorLines(err), log, reason);
    }
  }

  async #compareAndAttempt(reason: string, t0: number, log: Logger): Promise<ReloadOutcome> {
    const forced = reason === 'SIGHUP';
    if (!forced) {
      // Compare with what the running generation was built from; unchanged content is not a reload.
      const now = await digestInputs(watchedInputs(this.#target.current().source));
      if (now === this.#digest) {
        if (this.#failed === null) return { changed: false, ok: true, errors: [], pendingRestart: [], ms: 0 };
        // A broken edit was undone: the running generation is right again.
        this.#failed = null;
        await this.status.succeeded(this.#target.current().serial, []);
        return this.#emit({ changed: false, ok: true, errors: [], pendingRestart: [], ms: performance.now() - t0 });
      }
      if (this.#failed && (await digestInputs(this.#failed.inputs)) === this.#failed.digest) {
        return { changed: false, ok: false, errors: [], pendingRestart: [], ms: 0 };
      }
    }
    return this.#attempt(reason, t0, log);
  }

  /** Build a generation from the inputs as they are now; swap it in if it is complete and still current. */
  async #attempt(reason: string, t0: number, log: Logger): Promise<ReloadOutcome> {
    const inForce = watchedInputs(this.#target.current().source);
    const asRead = new Map<string, Buffer>();
    let loaded: LoadedConfig | null = null;
    let errors: string[] | null = null;
    let pendingRestart: string[] = [];
    try {
      loaded = await this.#loadConfig(asRead);
      pendingRestart = restartNeeded(this.#started, loaded.config);
      keepRunning(loaded.config, this.#runsWith);
    } catch (err) {
      errors = errorLines(err);
    }
    const inputs = loaded ? watchedInputs(loaded) : inForce;
    // New tables or script folders are watched from now on; the running generation's stay watched until the swap.
    if (!this.#external) await this.#watcher.watch(unionInputs(inForce, inputs));
    // SIGHUP: the inputs as this build takes them end a wait for one cut short (ChangeWatcher.taken).
    const forcedSizes = reason === 'SIGHUP' && !this.#external ? await this.#watcher.sizesNow() : null;
    // What this build reads: the configuration as parsed, the rest as it is before the build reads it.
    const readFiles = new Map<string, string>();
    const readDigest = await digestInputs(inputs, asRead, readFiles);
    let built: Built | null = null;
    let timedOut = false;
    if (loaded) {
      const deadline = this.tuning.buildTimeoutMs ?? buildDeadlineMs(loaded.config);
      const progress = { step: 'the configuration' };
      const work = this.#build(loaded, log, progress);
      const result = await withDeadline(work, deadline);
      if (result.kind === 'done') built = result.value;
      else if (result.kind === 'failed') errors = errorLines(result.error);
      else {
        timedOut = true;
        this.#abandon(work);
        errors = [`${loaded.file}: reload did not finish within ${deadline} ms while loading ${progress.step} (a script whose top level never returns?)`];
      }
    }
    // An input changed while the build read it: it may hold a mix of old and new files. Build again once quiet.
    if (!timedOut && (await digestInputs(inputs)) !== readDigest) {
      await built?.next.dispose();
      this.status.data.supersededBuilds++;
      void this.status.save();
      log.debug({ reason }, 'inputs changed during the reload; building again once they are quiet');
      if (!this.#external) this.#watcher.poke(); // else the teller saw the change too, and tells again
      return { changed: false, ok: true, errors: [], pendingRestart: [], ms: performance.now() - t0, superseded: true };
    }
    if (errors || !built) {
      this.#failed = { inputs, digest: readDigest };
      return this.#fail(t0, errors ?? ['reload failed'], log, reason);
    }
    const { next, setups, warnings } = built;
    // TLS first, every listener's or none: what OpenSSL refuses fails the reload with the running generation and
    // contexts in force. After the swap it failed the reload with the new generation in force (and was reported
    // as reloaded under postern serve). No handshake runs in between: all of it is one turn of the event loop.
    const tlsFailure = applyTls(this.#target.servers, setups);
    if (tlsFailure) {
      await next.dispose();
      this.#failed = { inputs, digest: readDigest };
      return this.#fail(t0, [tlsFailure], log, reason);
    }
    // Swap: new sessions (and new transactions) take the new generation; TLS changes apply to new handshakes.
    try {
      this.#target.swap(next);
    } catch (err) {
      if (this.#target.current() !== next) { // not in force: refused, as any failure before the swap
        await next.dispose().catch(() => undefined);
        this.#failed = { inputs, digest: readDigest };
        return this.#fail(t0, [`the new generation could not be swapped in: ${messageOf(err)}`], log, reason);
      }
      this.#afterSwapFailed(log, next.serial, 'what its swap does besides (the old generation let go, the queue told)', err);
    }
    // In force from here: what the generation in force was built from is recorded at once (state(), which `postern
    // serve`'s supervisor judges convergence by), and no step after this fails the reload. A step that throws is a
    // warning of its own: failing the reload there reported it refused (or, in a worker, told nothing of it) while
    // the new generation ran, and left the content recorded as the old one's.
    this.#digest = readDigest;
    this.#files = Object.fromEntries(readFiles);
    this.#failed = null;
    for (const [name, setup] of setups) {
      const server = this.#target.servers.get(name);
      try {
        if (server) applyListenerSetup(server, setup);
      } catch (err) {
        this.#afterSwapFailed(log, next.serial, `listener ${name}'s limits and trust`, err);
      }
    }
    if (!this.#external) {
      try {
        await this.#watcher.watch(inputs);
        if (forcedSizes) this.#watcher.taken(forcedSizes);
      } catch (err) {
        // The inputs of both generations stay watched (set up before the build), and the poll looks at them too.
        this.#afterSwapFailed(log, next.serial, 'watching its inputs alone', err);
      }
    }
    const ms = performance.now() - t0;
    // Said once when the change is made, not again at each later reload (as postern serve's supervisor does); still in `postern status`.
    for (const p of pendingRestart) log[this.#external || this.#restartsSaid.has(p) ? 'debug' : 'warn']({ change: p }, `configuration change needs a restart: ${p}`);
    this.#restartsSaid = new Set(pendingRestart);
    // Those new or changed since the last generation (setup-warnings.ts); under postern serve the supervisor says them, once for all processes.
    const say = this.setupWarnings.took(warnings);
    if (!this.#external) for (const w of say) log.warn(w.listener ? { listener: w.listener } : {}, w.message);
    log.info({ generation: next.serial, reason, ms: Math.round(ms) }, 'reloaded');
    // Under postern serve the supervisor says it, once for all processes (its reload coordinator's inForce).
    try {
      if (!this.#external) this.readableSecrets.say(built.loaded, log);
    } catch (err) {
      this.#afterSwapFailed(log, next.serial, 'the look for secret files others can read', err);
    }
    await this.status.succeeded(next.serial, pendingRestart); // its write's failure is its own (ReloadStatus.save)
    return this.#emit({ changed: true, ok: true, errors: [], pendingRestart, ms });
  }

  /** A step after the swap failed: the generation is in force all the same, and the reload stands. */
  #afterSwapFailed(log: Logger, serial: number, what: string, err: unknown): void {
    log.warn({ generation: serial, err: { message: messageOf(err) } },
      `reloaded: generation ${serial} is in force, but ${what} failed: ${messageOf(err)}`);
  }

  /** The generation and listener setups for `loaded` (the start's and `postern check`'s build); nothing is left running when it throws. */
  async #build(loaded: LoadedConfig, log: Logger, progress: { step: string }): Promise<Built> {
    const built = await buildGeneration(loaded, {
      logger: this.#target.logger, progress, store: this.#target.current().store, scriptFoldersInForce: this.#target.current().scriptFolders,
      configInForce: this.#target.current().config, revokedDevicesInForce: this.#target.current().revokedDevices,
    });
    try {
      progress.step = 'the afterBuild hook';
      await this.tuning.afterBuild?.();
    } catch (err) {
      await built.generation.dispose();
      throw err;
    }
    return { loaded, next: built.generation, setups: built.listeners, warnings: built.warnings };
  }

  /** A build past its deadline: whatever it makes when (if ever) it finishes is released. */
  #abandon(work: Promise<Built>): void {
    const settled = work.then((b) => b.next.dispose(), () => undefined);
    this.#abandoned.add(settled);
    void settled.finally(() => this.#abandoned.delete(settled));
  }

  /** Each listener told (metrics, a worker's answer to its supervisor); one that throws is logged, not the reload's failure. */
  #emit(outcome: ReloadOutcome): ReloadOutcome {
    for (const fn of this.#listeners) {
      try {
        fn(outcome);
      } catch (err) {
        this.#target.logger.child({ component: 'reload' }).warn({ err: { message: messageOf(err) } },
          `a reload's outcome could not be passed on (${messageOf(err)}); the reload ${outcome.ok ? 'stands' : 'was refused'} all the same`);
      }
    }
    return outcome;
  }

  /** Parse the configuration; a file's text as read goes into `asRead` (the digest must describe it). */
  async #loadConfig(asRead: Map<string, Buffer>): Promise<LoadedConfig> {
    const s = this.#source;
    if (!s.configPath || s.configText !== undefined) return parseConfig(s.configText ?? '', s.label, s.baseDir);
    const file = resolve(s.configPath);
    let bytes: Buffer;
    try {
      bytes = await readInputFile(file, MAX_CONFIG_BYTES);
    } catch (err) {
      throw new ConfigError([{ file, message: `cannot read: ${(err as Error).message}` }]);
    }
    asRead.set(file, bytes);
    return parseConfig(bytes.toString('utf8'), file, dirname(file));
  }

  async #fail(t0: number, errors: string[], log: Logger, reason: string): Promise<ReloadOutcome> {
    for (const e of errors) log[this.#external ? 'debug' : 'error']({ reason }, `reload refused, keeping generation ${this.#target.current().serial}: ${e}`);
    await this.status.failed(errors);
    return this.#emit({ changed: true, ok: false, errors, pendingRestart: [], ms: performance.now() - t0 });
  }

  async close(): Promise<void> {
    this.#closing = true;
    await this.#watcher.close();
    await (this.#followUp ?? this.#running)?.catch(() => undefined);
    // A stuck build may still hold isolates; give it its deadline to let go (the process must not exit under them).
    if (this.#abandoned.size) {
      let timer: NodeJS.Timeout | undefined;
      const bound = new Promise<void>((r) => { timer = setTimeout(r, this.tuning.buildTimeoutMs ?? buildDeadlineMs(this.#target.current().config)); });
      await Promise.race([Promise.allSettled([...this.#abandoned]), bound]).finally(() => clearTimeout(timer));
    }
    // A check's status write is not waited for by its run (`void save()`): the exit after close() would cut it.
    await this.status.written();
  }
}

type TlsOptions = Parameters<PosternServer['updateSecureContext']>[0];

/**
 * New handshakes use the new certificate, key, CA and CRL: on every listener, or on none (the ones already changed
 * are given their options back) with what OpenSSL refused, naming the listener. Null when all took theirs.
 */
function applyTls(servers: ReadonlyMap<string, PosternServer>, setups: ReadonlyMap<string, ListenerSetup>): string | null {
  const changed: Array<{ server: PosternServer; before: TlsOptions }> = [];
  for (const [name, setup] of setups) {
    const server = servers.get(name);
    if (!server) continue;
    const options = setup.options as TlsOptions;
    const current = server.options as unknown as Record<string, unknown>;
    const before = Object.fromEntries(Object.keys(options ?? {}).map((key) => [key, current[key]])) as TlsOptions;
    try {
      server.updateSecureContext(options); // all or nothing for this listener (PosternServer)
    } catch (err) {
      for (const c of changed.reverse()) c.server.updateSecureContext(c.before);
      return `listener ${name}: OpenSSL refused its TLS settings, which stay as they were: ${(err as Error).message}`;
    }
    changed.push({ server, before });
  }
  return null;
}

/** The rest of a listener's setup, which cannot fail: limits apply to new connections. */
function applyListenerSetup(server: PosternServer, setup: ListenerSetup): void {
  server.trust = setup.trust;
  server.greetingDelayMs = setup.greetingDelayMs;
  server.maxConnectionsPerIp = setup.maxConnectionsPerIp;
  // Not ipv6PrefixLength: connections are counted by it as they are accepted, under `postern serve` by the
  // supervisor, which keeps the one it started with; a worker counting by another claimed no slot (restart-needed.ts).
  server.tlsHandshakeTimeoutMs = setup.tlsHandshakeTimeoutMs;
  certificateInForce(setup);
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function errorLines(err: unknown): string[] {
  if (err instanceof GenerationError) return [...err.lines];
  if (err instanceof ConfigError) return err.message.split('\n');
  const e = err as { errors?: unknown[]; message?: string };
  if (Array.isArray(e.errors) && e.errors.length) return e.errors.map(String);
  return [err instanceof Error ? err.message : String(err)];
}
