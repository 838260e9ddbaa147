/**
 * Failed authentications per client IP over a sliding window (RFC 4954 §9: slow down, then refuse), and
 * the rules that use them: when an address is refused, and how long a failure reply waits.
 * Shared by all listeners and all connections, so a client cannot reset its count by switching ports or
 * by keeping connections open; the store is pluggable so worker processes can share one count.
 */
import type { ListenerConfig } from '../config/schema.ts';

/**
 * Where failure times are kept. This process's memory by default; a multi-process server passes a store
 * shared by its workers. Keys are client IPs; times are milliseconds since the epoch.
 */
export interface AuthFailureStore {
  /** Record a failure of `key` at `now`; resolves to the failures of `key` since `since`, this one included. */
  add(key: string, now: number, since: number): Promise<number>;
  /** Failures of `key` since `since`. */
  count(key: string, since: number): Promise<number>;
}

/**
 * The failure times of one process, in a Map — or in a Map-like store that also tells the other worker
 * processes (engine/cluster/shared-counters.ts SharedFailureStore), so the limit holds for their sum.
 */
export interface FailureMap {
  get(ip: string): number[] | undefined;
  set(ip: string, times: number[]): unknown;
  delete(ip: string): unknown;
  keys(): IterableIterator<string>;
  readonly size: number;
  /** A failure was recorded in this process (not a prune). */
  recorded?(ip: string, at: number): void;
}

const NO_FAILURES = Promise.resolve(0);

export class MemoryAuthFailureStore implements AuthFailureStore {
  readonly #failures: FailureMap;

  constructor(failures: FailureMap = new Map<string, number[]>()) { this.#failures = failures; }

  add(key: string, now: number, since: number): Promise<number> {
    // Many failing addresses (rotating IPv6) must not grow the map without bound: drop expired entries.
    if (this.#failures.size > 10_000) for (const k of [...this.#failures.keys()]) this.#recent(k, since);
    const list = this.#recent(key, since);
    list.push(now);
    this.#failures.set(key, list);
    this.#failures.recorded?.(key, now);
    return Promise.resolve(list.length);
  }

  count(key: string, since: number): Promise<number> {
    // Most addresses never failed: asked at every connection and AUTH, they cost no list and no delete.
    if (this.#failures.get(key) === undefined) return NO_FAILURES;
    return Promise.resolve(this.#recent(key, since).length);
  }

  #recent(key: string, since: number): number[] {
    const latest = Date.now();
    // A time ahead of the clock was recorded before the clock was set back: counted as now, its window ends
    // as it would have, instead of when the clock catches up (an address refused an hour more after a step).
    const list = (this.#failures.get(key) ?? []).map((t) => Math.min(t, latest)).filter((t) => t > since);
    if (list.length) this.#failures.set(key, list); else this.#failures.delete(key);
    return list;
  }
}

type FailureLimits = Pick<ListenerConfig['limits'], 'authFailuresPerIp' | 'authFailuresBeforeDelay' | 'authFailureDelayMs'>;

/** The longest extra wait of one failure reply. */
const MAX_DELAY_MS = 30_000;

export class AuthFailureLimiter {
  readonly windowMs: number;
  readonly #store: AuthFailureStore;
  /** Per address, the end of the decision running now (see oneAtATime). */
  readonly #running = new Map<string, Promise<void>>();

  constructor(windowMs: number, store: AuthFailureStore = new MemoryAuthFailureStore()) {
    this.windowMs = windowMs;
    this.#store = store;
  }

  /** Count one failed AUTH from `ip`; resolves to its failures within the window. */
  record(ip: string, now = Date.now()): Promise<number> {
    return this.#store.add(ip, now, now - this.windowMs);
  }

  count(ip: string, now = Date.now()): Promise<number> {
    return this.#store.count(ip, now - this.windowMs);
  }

  /**
   * `ip` may not authenticate now: it reached the listener's authFailuresPerIp. Applies to new connections
   * and to every AUTH on connections already open.
   */
  async refused(ip: string, limits: FailureLimits, now = Date.now()): Promise<boolean> {
    return (await this.count(ip, now)) >= limits.authFailuresPerIp;
  }

  /**
   * Run `decide` (check the limit, verify, record) when no other decision for `ip` is running in this
   * process. Otherwise attempts sent in parallel over many connections would all pass the check before any
   * failure is recorded: the limit would allow one more guess per open connection.
   */
  oneAtATime<T>(ip: string, decide: () => Promise<T>): Promise<T> {
    const run = (this.#running.get(ip) ?? Promise.resolve()).then(decide);
    const done = run.then(() => undefined, () => undefined);
    this.#running.set(ip, done);
    void done.then(() => { if (this.#running.get(ip) === done) this.#running.delete(ip); });
    return run;
  }

  /** Extra wait before the reply to a connection's `failures`-th failed AUTH (0 up to authFailuresBeforeDelay). */
  static delayMs(failures: number, limits: FailureLimits): number {
    const over = failures - limits.authFailuresBeforeDelay;
    return over > 0 ? Math.min(over * limits.authFailureDelayMs, MAX_DELAY_MS) : 0;
  }
}
