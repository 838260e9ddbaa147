/**
 * Counts failed authentications per client IP over a sliding window (RFC 4954 §9: slow down, then refuse).
 * Shared by all listeners, so a client cannot reset its count by switching ports.
 */

/**
 * Where the failure times live: a Map in one process; in the multi-process model a store that also
 * tells the other workers (engine/cluster/shared-counters.ts), so the limit holds for their sum.
 */
export interface FailureStore {
  get(ip: string): number[] | undefined;
  set(ip: string, times: number[]): unknown;
  delete(ip: string): unknown;
  keys(): IterableIterator<string>;
  readonly size: number;
  /** A failure was recorded in this process (not a prune). */
  recorded?(ip: string, at: number): void;
}

export class AuthFailureLimiter {
  readonly #failures: FailureStore;

  readonly windowMs: number;

  constructor(windowMs: number, store: FailureStore = new Map<string, number[]>()) {
    this.windowMs = windowMs;
    this.#failures = store;
  }

  record(ip: string, now = Date.now()): number {
    // Many failing addresses (rotating IPv6) must not grow the map without bound: drop expired entries.
    if (this.#failures.size > 10_000) for (const key of [...this.#failures.keys()]) this.count(key, now);
    const list = this.#recent(ip, now);
    list.push(now);
    this.#failures.set(ip, list);
    this.#failures.recorded?.(ip, now);
    return list.length;
  }

  count(ip: string, now = Date.now()): number {
    const list = this.#recent(ip, now);
    if (list.length) this.#failures.set(ip, list); else this.#failures.delete(ip);
    return list.length;
  }

  #recent(ip: string, now: number): number[] {
    return (this.#failures.get(ip) ?? []).filter((t) => now - t < this.windowMs);
  }
}
