/**
 * Connections counted over the per-address limit, recounted until their 421 is decided: each keeps the
 * count it was accepted with, less the connections of the same address counted before it that have closed
 * since. A client that reconnects at once at its limit can be counted before this process has run its
 * previous connection's 'close' (Node runs close callbacks last in a turn); recounted a little later, its
 * new connection is within the limit. Connections counted after it never lower its count, so a client
 * cannot open and close others to slip under the limit.
 */
export interface OverLimit { readonly ip: string; readonly serial: number; open: number }

export class OverLimitCounts {
  readonly #waiting = new Map<string, Set<OverLimit>>();

  /** A connection from `ip`, the `serial`-th counted, found `open` (itself included) over the limit. */
  add(ip: string, serial: number, open: number): OverLimit {
    const over: OverLimit = { ip, serial, open };
    let set = this.#waiting.get(ip);
    if (!set) this.#waiting.set(ip, set = new Set());
    set.add(over);
    return over;
  }

  /** The `serial`-th counted connection from `ip` closed: one less for those counted after it. */
  closed(ip: string, serial: number): void {
    const set = this.#waiting.get(ip);
    if (!set) return;
    for (const over of set) if (over.serial > serial) over.open--;
  }

  /** Decided (or closed): no longer recounted. */
  forget(over: OverLimit): void {
    const set = this.#waiting.get(over.ip);
    if (!set) return;
    set.delete(over);
    if (set.size === 0) this.#waiting.delete(over.ip);
  }
}
