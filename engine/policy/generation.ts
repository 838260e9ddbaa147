/**
 * A generation: everything policy needs, built and validated together from one configuration — lookup
 * tables, users, and one sandbox per scripts folder (buildGeneration makes it, with the listeners' TLS).
 * Sessions hold the generation they started with; a reload builds a new one and the old one is disposed
 * when its last session lets go.
 */
import type { Config, ListenerConfig } from '../config/schema.ts';
import type { LoadedConfig } from '../config/load-config.ts';
import type { Sandbox } from '../sandbox/index.ts';
import type { HookName } from '../sandbox/api/index.ts';
import type { LookupTable } from './lookup-tables.ts';
import type { LocalRecipients } from './local-recipients.ts';
import type { CounterStore } from '../store/counter-store.ts';
import { domainKey } from './domain-key.ts';
import { generationRetired } from '../metrics/metrics.ts';
import { NO_REVOKED_DEVICES, type RevokedDevices } from '../pki/revoked-devices.ts';

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
  /** The recipients that exist in the local domains (`localRecipients`); null: every address there is accepted. */
  readonly localRecipients: LocalRecipients | null;
  /** The server's counter store (made once at start, see engine/store/): scripts and built-in limits count in it. */
  readonly store: CounterStore | undefined;
  readonly #sandboxes: ReadonlyMap<string, Sandbox>;
  /** The listeners' shadow scripts folders (engine/shadow/), by folder: never the live sandboxes, even for the same folder. */
  readonly #shadows: ReadonlyMap<string, Sandbox>;
  /** The scripts folders that were there when it was built: a reload refuses to lose one (generation/scripts-folders.ts). */
  readonly scriptFolders: ReadonlySet<string>;
  /** The revoked certificates of `pki.dir` by digest, for the policy services (Postfix sends no serial) and the account page; none without them. */
  readonly revokedDevices: RevokedDevices;
  #refs = 0;
  #retired = false;
  #disposed = false;
  #teardown: Promise<void> | null = null;

  /** Made by buildGeneration (engine/generation/build-generation.ts), which loads and checks every part first. */
  constructor(source: LoadedConfig, tables: ReadonlyMap<string, LookupTable>, users: ReadonlyMap<string, string>, sandboxes: ReadonlyMap<string, Sandbox>, store?: CounterStore,
    shadows: ReadonlyMap<string, Sandbox> = new Map(), scriptFolders: ReadonlySet<string> = new Set(), revokedDevices: RevokedDevices = NO_REVOKED_DEVICES,
    localRecipients: LocalRecipients | null = null) {
    this.source = source;
    this.store = store;
    this.config = source.config;
    this.tables = tables;
    this.users = users;
    this.localDomains = new Set(source.config.localDomains.map((d) => domainKey(d) || d.toLowerCase())); // compared by domainKey()
    this.#sandboxes = sandboxes;
    this.#shadows = shadows;
    this.scriptFolders = scriptFolders;
    this.revokedDevices = revokedDevices;
    this.localRecipients = localRecipients;
  }

  listener(name: string): ListenerConfig {
    const l = this.config.listeners.find((x) => x.name === name);
    if (!l) throw new Error(`no listener ${name} in this configuration`);
    return l;
  }

  /** The sandbox of a listener's or policy service's scripts folder (undefined: the top-level one). */
  sandboxFor(listener: Pick<ListenerConfig, 'scripts'> | undefined): Sandbox {
    return this.#sandboxes.get(listener?.scripts ?? this.config.scripts)!;
  }

  /** The listener's shadow scripts (`shadowScripts`), if it has a folder of them. */
  /** Whether any listener of this generation has shadow scripts. */
  get hasShadowScripts(): boolean {
    return this.#shadows.size > 0;
  }

  shadowSandboxFor(listener: Pick<ListenerConfig, 'shadowScripts'> | undefined): Sandbox | undefined {
    return listener?.shadowScripts ? this.#shadows.get(listener.shadowScripts) : undefined;
  }

  hasScript(listener: Pick<ListenerConfig, 'scripts'> | undefined, hook: HookName): boolean {
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
    generationRetired(this.serial); // no session holds it: no verdict will be counted under it again
    const teardown = Promise.all([...this.#sandboxes.values(), ...this.#shadows.values()].map((s) => s.dispose())).then(() => undefined);
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
