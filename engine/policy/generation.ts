/**
 * A generation: everything policy needs, built and validated together from one configuration — lookup
 * tables, users, and one sandbox per scripts folder. Sessions hold the generation they started with;
 * a reload builds a new one and the old one is disposed when its last session lets go.
 */
import type { Config, ListenerConfig } from '../config/schema.ts';
import type { LoadedConfig } from '../config/load-config.ts';
import { Sandbox, loadScriptDirectory } from '../sandbox/index.ts';
import type { HookName } from '../sandbox/api/index.ts';
import { loadTables, type LookupTable } from './lookup-tables.ts';
import { loadUsersFile } from '../auth/users-file.ts';
import type { Logger } from '../logging/logger.ts';
import type { CounterStore } from '../store/counter-store.ts';

let nextSerial = 1;

/** Teardowns in progress, of every generation (see allTornDown). */
const tearingDown = new Set<Promise<void>>();

export class PolicyGeneration {
  readonly serial = nextSerial++;
  readonly config: Config;
  readonly source: LoadedConfig;
  readonly tables: ReadonlyMap<string, LookupTable>;
  readonly users: ReadonlyMap<string, string>;
  readonly localDomains: ReadonlySet<string>;
  /** The server's counter store (made once at start, see engine/store/): scripts and built-in limits count in it. */
  readonly store: CounterStore | undefined;
  readonly #sandboxes: ReadonlyMap<string, Sandbox>;
  #refs = 0;
  #retired = false;
  #disposed = false;
  #teardown: Promise<void> | null = null;

  private constructor(source: LoadedConfig, tables: Map<string, LookupTable>, users: Map<string, string>, sandboxes: Map<string, Sandbox>, store: CounterStore | undefined) {
    this.source = source;
    this.store = store;
    this.config = source.config;
    this.tables = tables;
    this.users = users;
    this.localDomains = new Set(source.config.localDomains.map((d) => d.toLowerCase()));
    this.#sandboxes = sandboxes;
  }

  /** Build and validate; throws (with file and line) without leaving anything running. */
  static async build(source: LoadedConfig, logger: Logger, store?: CounterStore): Promise<PolicyGeneration> {
    const config = source.config;
    const tables = await loadTables(config);
    const users = config.users ? await loadUsersFile(config.users) : new Map<string, string>();
    const dirs = new Set([config.scripts, ...config.listeners.map((l) => l.scripts ?? config.scripts)]);
    const sandboxes = new Map<string, Sandbox>();
    const log = logger.child({ component: 'script' });
    try {
      for (const dir of dirs) {
        const scripts = await loadScriptDirectory(dir);
        sandboxes.set(dir, await Sandbox.create({
          scripts,
          timeoutMs: config.sandbox.timeoutMs,
          memoryLimitMb: config.sandbox.memoryLimitMb,
          isolates: config.sandbox.isolates,
          fastPathMs: config.sandbox.fastPathMs,
          host: {
            lookup: (table: string, key: string) => tables.get(table)?.get(key) ?? null,
            log: (cid: string | null, file: string, level: 'info' | 'warn' | 'error' | 'fatal', message: string) => log[level]({ cid, script: file }, message),
            store,
          },
        }));
      }
    } catch (err) {
      await Promise.all([...sandboxes.values()].map((s) => s.dispose()));
      throw err;
    }
    return new PolicyGeneration(source, tables, users, sandboxes, store);
  }

  listener(name: string): ListenerConfig {
    const l = this.config.listeners.find((x) => x.name === name);
    if (!l) throw new Error(`no listener ${name} in this configuration`);
    return l;
  }

  sandboxFor(listener: ListenerConfig | undefined): Sandbox {
    return this.#sandboxes.get(listener?.scripts ?? this.config.scripts)!;
  }

  hasScript(listener: ListenerConfig | undefined, hook: HookName): boolean {
    return this.sandboxFor(listener).has(hook);
  }

  get sandboxes(): Iterable<Sandbox> { return this.#sandboxes.values(); }

  acquire(): this { this.#refs++; return this; }

  release(): void {
    this.#refs--;
    if (this.#retired && this.#refs <= 0) void this.dispose();
  }

  /** No new sessions will take this generation; dispose once the last one releases it. */
  retire(): void {
    this.#retired = true;
    if (this.#refs <= 0) void this.dispose();
  }

  get disposed(): boolean { return this.#disposed; }
  get references(): number { return this.#refs; }

  /** Releases the isolates; the promise settles once V8 has torn them down (safe to exit after). */
  dispose(): Promise<void> {
    if (this.#disposed) return this.#teardown ?? Promise.resolve();
    this.#disposed = true;
    const teardown = Promise.all([...this.#sandboxes.values()].map((s) => s.dispose())).then(() => undefined);
    this.#teardown = teardown;
    tearingDown.add(teardown);
    void teardown.finally(() => tearingDown.delete(teardown));
    return teardown;
  }

  /**
   * Settles once every generation disposed so far is torn down. A process must not exit while isolates are
   * being torn down (isolated-vm can abort), and older generations are disposed whenever their last session
   * or delivery lets go, so shutting down waits for all of them, not only the current one.
   */
  static async allTornDown(): Promise<void> {
    while (tearingDown.size) await Promise.all([...tearingDown]);
  }

  /** Settles when a disposed generation's isolates are gone. */
  get teardown(): Promise<void> { return this.#teardown ?? Promise.resolve(); }
}
