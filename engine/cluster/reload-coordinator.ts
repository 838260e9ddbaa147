/**
 * Hot reload under `postern serve`: the supervisor watches the inputs once (rather than every child
 * watching them itself) and tells every child to reload; each child builds its own generation (its own
 * isolates) and answers with its state: the digest of the inputs its generation in force was built from,
 * and the last refused content with its errors. From those answers the supervisor
 * - reports a refused build once, not once per process;
 * - tells the truth in `postern status`: each process's generation and digest, whether they all agree,
 *   and the errors of any process that refused;
 * - gets every process to the same content: a child whose build was superseded (an input changed while
 *   it read it) or that started during an edit is told again by the next settled change.
 */
import type { LoadedConfig } from '../config/load-config.ts';
import { loadStartConfig } from '../config/start-config.ts';
import { parseToHand, type HandedParse } from '../config/handed-parse.ts';
import type { Logger } from '../logging/logger.ts';
import { ChangeWatcher, POLL_MS, describeSettling, settlingMessage } from '../reload/change-watcher.ts';
import { digestInputs, unionInputs, watchedInputs, type WatchedInputs } from '../reload/watched-inputs.ts';
import { SetupWarnings } from '../reload/setup-warnings.ts';
import type { GenerationWarning } from '../generation/build-generation.ts';

/** What a child answers after a reload (Reloader.state()). */
export interface ChildReloadState {
  generation: number;
  digest: string;
  refused: string | null;
  lastError: string[] | null;
  reloads: number;
  /** The child's process (absent from an older child): a replacement has another, and its own counts. */
  pid?: number;
  /** Reloads begun (a SIGHUP's among them), and those of them thrown away for a newer build (absent from an older child). */
  checks?: number;
  supersededBuilds?: number;
  /** The setup warnings of its generation in force (absent from an older child, which logs its own). */
  warnings?: GenerationWarning[];
  /** Each input file's SHA-256 in the content of the generation in force (absent from an older child). */
  files?: Record<string, string>;
}

/** Quiet time after the last event before the children are told (as the single process's reloader). */
const SETTLE_MS = 50;

export class ReloadCoordinator {
  readonly #configPath: string | undefined;
  /**
   * The start's parse of postern.yaml: the file is read again at each child's answer (and each settled change), and
   * while it holds the same text that parse is taken, not made again (handed-parse.ts), as the children take it.
   */
  readonly #handed: HandedParse | undefined;
  readonly #log: Logger;
  readonly #tell: (reason: 'change' | 'SIGHUP') => void;
  readonly #watcher: ChangeWatcher;
  readonly #states = new Map<string, ChildReloadState>();
  #inputs: WatchedInputs;
  /** The errors last reported, so the same refusal is logged once whichever children answer with it. */
  #reported = '';
  /** What the configuration on disk asks for that only a restart applies (the supervisor's view: what it bound). */
  readonly #pending: () => string[];
  /** The restarts already logged, so each is said once (the children log theirs at debug only). */
  #restartsReported = new Set<string>();

  /** Told the configuration every process now runs (the supervisor's own checks at accept follow it). */
  readonly #inForce: (loaded: LoadedConfig) => void;
  /** The digest last told to #inForce. */
  #adopted = '';
  /** A shrunk input is waited for (ChangeWatcher.settling). */
  #settling = false;
  /** The setup warnings of every process's generation in force, said once for the server (setup-warnings.ts). */
  readonly #warnings = new SetupWarnings();

  constructor(loaded: LoadedConfig, configPath: string | undefined, log: Logger, tell: (reason: 'change' | 'SIGHUP') => void,
    pending: () => string[] = () => [], inForce: (loaded: LoadedConfig) => void = () => undefined, watchingChanged: () => void = () => undefined) {
    this.#configPath = configPath;
    this.#handed = parseToHand(loaded);
    this.#pending = pending;
    this.#inForce = inForce;
    this.#log = log.child({ component: 'reload' });
    this.#tell = tell;
    this.#inputs = watchedInputs(loaded);
    this.#watcher = new ChangeWatcher(SETTLE_MS, () => this.#settled(), undefined, (reason) => {
      this.#log.error({ reason }, `file changes are not watched (${reason}): the inputs are looked at every ${POLL_MS / 1000} s instead; SIGHUP reloads at once`);
      watchingChanged(); // cluster.json says so
    }, (files) => {
      // A shrunk input waited for: said once as the wait begins, every further write during it at debug only.
      if (files.length) this.#log[this.#settling ? 'debug' : 'info']({ settling: describeSettling(files) }, settlingMessage(files));
      else this.#log.debug('the inputs waited for are settled');
      this.#settling = files.length > 0;
      watchingChanged(); // cluster.json and `postern status` say what is waited for
    });
  }

  async start(): Promise<void> {
    await this.#watcher.watch(this.#inputs);
  }

  /**
   * SIGHUP: every child rebuilds, changed or not. The inputs as they are now are whole (the administrator says so): a
   * wait for one cut short ends (ChangeWatcher.taken), else it held every later change while that input kept changing.
   */
  hup(): void {
    void this.#watcher.sizesNow().then((sizes) => this.#watcher.taken(sizes));
    this.#tell('SIGHUP');
  }

  #settled(): void {
    // The configuration may name other tables or script folders now: watch those too (the old ones stay
    // watched, since a refused configuration leaves the children on them).
    try {
      // Only a regular file is read: this is the supervisor's event loop, which a FIFO there would block for good.
      const loaded = loadStartConfig({ configPath: this.#configPath, regularFileOnly: true, handed: this.#handed });
      this.#inputs = unionInputs(this.#inputs, watchedInputs(loaded));
      void this.#watcher.watch(this.#inputs);
    } catch { /* a broken configuration: the children refuse it and say why */ }
    this.#tell('change');
  }

  /** A child's answer. */
  answered(child: string, state: ChildReloadState): void {
    this.#states.set(child, state);
    const errors = this.lastError();
    const key = errors ? errors.join('\n') : '';
    if (key && key !== this.#reported) {
      const refusing = [...this.#states].filter(([, s]) => s.lastError).map(([name]) => name);
      for (const line of errors!) this.#log.error({ processes: refusing }, `reload refused, keeping the running generation: ${line}`);
    }
    this.#reported = key;
    // What any process has in force: a warning new to one of them (the others still on the previous generation) is said at once.
    for (const w of this.#warnings.took([...this.#states.values()].flatMap((s) => s.warnings ?? []))) {
      this.#log.warn(w.listener ? { listener: w.listener } : {}, w.message);
    }
    if (!errors) this.#reportRestarts();
    void this.#adoptOnceAgreed();
  }

  /**
   * Once every process that answered runs the same content and none refused it, the supervisor takes it too
   * for what it judges itself (the listeners' and policy services' limits at accept, the spool's floors of /readyz):
   * with the configuration it started with, a lowered `maxConnectionsPerIp` was in force in the workers and not at
   * the supervisor's door, and a raised `spool.minFreeBytes` refused mail while /readyz said ready.
   */
  async #adoptOnceAgreed(): Promise<void> {
    const states = [...this.#states.values()];
    const digest = states[0]?.digest;
    if (!digest || digest === this.#adopted || states.some((s) => s.lastError || s.digest !== digest)) return;
    let loaded: LoadedConfig;
    try {
      loaded = loadStartConfig({ configPath: this.#configPath, regularFileOnly: true, handed: this.#handed });
    } catch {
      return;
    }
    // The file as it is now is what they run (not a later edit, which a later answer brings).
    if (await digestInputs(watchedInputs(loaded)) !== digest || digest === this.#adopted) return;
    this.#adopted = digest;
    this.#inForce(loaded);
  }

  /** An accepted reload that asks for a restart says so once, as a single process's reloader does. */
  #reportRestarts(): void {
    const now = new Set(this.#pending());
    for (const p of now) if (!this.#restartsReported.has(p)) this.#log.warn({ change: p }, `configuration change needs a restart: ${p}`);
    this.#restartsReported = now;
  }

  /** A child is gone; its replacement answers once it is ready. */
  forget(child: string): void {
    this.#states.delete(child);
  }

  /** The errors of the processes that refused their last build (each line once); null when none did. */
  lastError(): string[] | null {
    const lines = new Set<string>();
    for (const s of this.#states.values()) for (const line of s.lastError ?? []) lines.add(line);
    return lines.size ? [...lines] : null;
  }

  /**
   * Whether every process that answered runs a generation built from the inputs as they are on disk now (the
   * digest each child reports, Reloader.state(), against the same digest taken here). False while an edit is
   * being reloaded, when a process refused it, and when the configuration cannot be read.
   */
  async inForceEverywhere(): Promise<boolean> {
    return (await this.inForce()) !== null;
  }

  /** The configuration on disk when every process that answered runs a generation built from it (inForceEverywhere), else null. */
  async inForce(): Promise<LoadedConfig | null> {
    if (!this.#states.size) return null;
    let loaded: LoadedConfig;
    let disk: string;
    try {
      loaded = loadStartConfig({ configPath: this.#configPath, regularFileOnly: true, handed: this.#handed });
      disk = await digestInputs(watchedInputs(loaded));
    } catch {
      return null;
    }
    return [...this.#states.values()].every((s) => s.digest === disk) ? loaded : null;
  }

  /** For `postern status`: whether every process runs a generation built from the same content, and each one's. */
  /** `supervisor`: the content whose live keys the supervisor judges by (limits at accept, the spool's floors; null: the one it started with). */
  /** `watching`: null while file events come; else why not (the inputs are then polled, POLL_MS). */
  /** `settling`: the inputs that shrank and are waited for before the children are told (null: none). */
  status(): { converged: boolean; lastError: string[] | null; processes: Record<string, ChildReloadState>; supervisor: string | null; watching: string | null; settling: string[] | null; warnings: readonly GenerationWarning[] } {
    const digests = new Set([...this.#states.values()].map((s) => s.digest));
    const settling = this.#watcher.settling;
    return { converged: digests.size <= 1, lastError: this.lastError(), processes: Object.fromEntries([...this.#states].map(([name, { warnings: _, ...state }]) => [name, state])), supervisor: this.#adopted || null,
      watching: this.#watcher.unavailable, settling: settling.length ? describeSettling(settling) : null, warnings: this.#warnings.inForce };
  }

  close(): Promise<void> {
    return this.#watcher.close();
  }
}
