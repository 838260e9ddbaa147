/**
 * Destinations (`host:port`) that could not be reached, suspended for a while (Postfix's "delivery
 * temporarily suspended"): the mail queued for a dead or stalling next hop is deferred without a connection
 * of its own until the suspension ends, instead of each message waiting out its own connection timeout in a
 * per-destination slot while the attempts behind it hold the queue runner's other slots (a few thousand
 * messages for one dead MX kept every other domain's mail waiting for hours). A connection that works
 * lifts it at once.
 */
import { DeliveryFailure } from './outcome.ts';

/** Suspensions kept at most: past it the oldest go first (each is only a shortcut, never a verdict). */
const MAX_ENTRIES = 10_000;

export class DestinationSuspensions {
  /** destination → until (monotonic ms) and the failure that suspended it; in insertion order. */
  readonly #entries = new Map<string, { until: number; failure: DeliveryFailure }>();

  /**
   * Suspend `destination` for `ms` after `failure`. Returns whether it was not suspended before (worth a log
   * line: a busy destination fails several connections at once).
   */
  suspend(destination: string, failure: DeliveryFailure, ms: number): boolean {
    const fresh = !this.failure(destination);
    this.#entries.delete(destination);
    this.#entries.set(destination, { until: performance.now() + ms, failure });
    if (this.#entries.size > MAX_ENTRIES) this.#prune();
    return fresh;
  }

  /** Every suspension lifted: `postern queue retry` or a reload (the operator may have fixed what failed). */
  clear(): void {
    this.#entries.clear();
  }

  /** A connection to `destination` worked. */
  lift(destination: string): void {
    this.#entries.delete(destination);
  }

  /** The failure that suspended `destination`, while it is suspended; null otherwise. */
  failure(destination: string): DeliveryFailure | null {
    const e = this.#entries.get(destination);
    if (!e) return null;
    if (e.until <= performance.now()) {
      this.#entries.delete(destination);
      return null;
    }
    return e.failure;
  }

  /** What a recipient is deferred with while `destination` is suspended after `failure`. */
  static deferral(destination: string, failure: DeliveryFailure): DeliveryFailure {
    return new DeliveryFailure(`delivery temporarily suspended: ${failure.message}`,
      { permanent: false, enhanced: failure.enhanced, remoteMta: failure.remoteMta ?? destination });
  }

  #prune(): void {
    const now = performance.now();
    for (const [k, e] of this.#entries) if (e.until <= now) this.#entries.delete(k);
    for (const k of this.#entries.keys()) {
      if (this.#entries.size <= MAX_ENTRIES) break;
      this.#entries.delete(k);
    }
  }
}
