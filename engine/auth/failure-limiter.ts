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

/**
 * `at`, a failure of `key`, recorded in `failures` with `times` (its earlier ones still counted), and the
 * addresses whose failures are all at or before `since` dropped. The map is kept in order of each address's
 * latest failure (the key moves to the end), so the expired ones are at its front: dropping them costs a step
 * per address dropped, not a walk over every address. Without it an address that failed once stayed for the
 * process's life unless it came back (a process told of other processes' failures never looked again).
 */
export function failureRecorded(failures: FailureMap, key: string, times: number[], at: number, since: number): number[] {
  times.push(at);
  failures.delete(key);
  failures.set(key, times);
  dropExpired(failures, since);
  return times;
}

/** Drop, from the front of `failures`, the addresses with no failure after `since` (see failureRecorded). */
function dropExpired(failures: FailureMap, since: number): void {
  const now = Date.now();
  for (const key of failures.keys()) {
    const times = failures.get(key);
    const latest = times?.length ? times[times.length - 1]! : -Infinity;
    if (latest > now) {
      // Recorded before the clock was set back: counted as now from here on (as #recent does), and moved to
      // the end, so that it neither stays for the length of the step nor holds back the pruning behind it.
      failures.delete(key);
      failures.set(key, times!.map((t) => Math.min(t, now)));
      continue;
    }
    if (latest > since) return;
    failures.delete(key);
  }
}

export class MemoryAuthFailureStore implements AuthFailureStore {
  readonly #failures: FailureMap;

  constructor(failures: FailureMap = new Map<string, number[]>()) { this.#failures = failures; }

  /** Addresses whose failures are kept now (the metric postern_auth_failure_addresses). */
  get addresses(): number { return this.#failures.size; }

  add(key: string, now: number, since: number): Promise<number> {
    // Many failing addresses (rotating IPv4 addresses, IPv6 networks) must not grow the map: expired ones go.
    const list = failureRecorded(this.#failures, key, this.#recent(key, since), now, since);
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
