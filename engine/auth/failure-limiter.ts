/**
 * Counts failed authentications per client IP over a sliding window (RFC 4954 §9: slow down, then refuse).
 * Shared by all listeners, so a client cannot reset its count by switching ports.
 */
export class AuthFailureLimiter {
  readonly #failures = new Map<string, number[]>();

  readonly windowMs: number;

  constructor(windowMs: number) { this.windowMs = windowMs; }

  record(ip: string, now = Date.now()): number {
    // Many failing addresses (rotating IPv6) must not grow the map without bound: drop expired entries.
    if (this.#failures.size > 10_000) for (const key of [...this.#failures.keys()]) this.count(key, now);
    const list = this.#recent(ip, now);
    list.push(now);
    this.#failures.set(ip, list);
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
