/**
 * The default store: counters in this process's memory. Answers at once and never fails. In a
 * multi-process server the supervisor holds one of these and the workers reach it over IPC.
 */
import { MemoryAuthFailureStore, type AuthFailureStore } from '../auth/failure-limiter.ts';
import type { CounterStore, ImmediateCounterStore, RateResult } from './counter-store.ts';

interface Entry { value: number; expiresAt: number }

/** Entries kept before expired ones are swept out (then twice the live count, so a sweep is rare). */
const SWEEP_FLOOR = 10_000;

export class MemoryCounterStore implements CounterStore, ImmediateCounterStore {
  readonly kind = 'memory';
  readonly #entries = new Map<string, Entry>();
  readonly #now: () => number;
  readonly #authFailures = new MemoryAuthFailureStore();
  #sweepAt = SWEEP_FLOOR;

  /** `now`: milliseconds on a clock that never goes back (tests pass their own). */
  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  get immediate(): ImmediateCounterStore {
    return this;
  }

  rate(key: string, limit: number, windowSeconds: number): Promise<RateResult> {
    return Promise.resolve(this.rateNow(key, limit, windowSeconds));
  }

  get(key: string): Promise<number> {
    return Promise.resolve(this.getNow(key));
  }

  add(key: string, n: number, ttlSeconds: number): Promise<number> {
    return Promise.resolve(this.addNow(key, n, ttlSeconds));
  }

  rateNow(key: string, limit: number, windowSeconds: number): RateResult {
    const now = this.#now();
    let entry = this.#live(key, now);
    if (entry && entry.value >= limit) return { allowed: false, count: entry.value, resetSeconds: resetSeconds(entry, now) };
    entry ??= this.#create(key, now + windowSeconds * 1000);
    entry.value++;
    return { allowed: true, count: entry.value, resetSeconds: resetSeconds(entry, now) };
  }

  getNow(key: string): number {
    return this.#live(key, this.#now())?.value ?? 0;
  }

  addNow(key: string, n: number, ttlSeconds: number): number {
    const now = this.#now();
    const entry = this.#live(key, now) ?? this.#create(key, now + ttlSeconds * 1000);
    entry.value += n;
    return entry.value;
  }

  authFailures(): AuthFailureStore {
    return this.#authFailures;
  }

  /** Keys held now, expired ones not yet swept included (tests). */
  get size(): number {
    return this.#entries.size;
  }

  close(): Promise<void> {
    this.#entries.clear();
    return Promise.resolve();
  }

  #live(key: string, now: number): Entry | undefined {
    const entry = this.#entries.get(key);
    if (entry && entry.expiresAt <= now) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry;
  }

  #create(key: string, expiresAt: number): Entry {
    if (this.#entries.size >= this.#sweepAt) this.#sweep();
    const entry = { value: 0, expiresAt };
    this.#entries.set(key, entry);
    return entry;
  }

  /** Drop expired entries, so that keys used once (rotating addresses, identities) do not pile up. */
  #sweep(): void {
    const now = this.#now();
    for (const [key, entry] of this.#entries) if (entry.expiresAt <= now) this.#entries.delete(key);
    this.#sweepAt = Math.max(SWEEP_FLOOR, 2 * this.#entries.size);
  }
}

const resetSeconds = (entry: Entry, now: number): number => Math.max(0, Math.ceil((entry.expiresAt - now) / 1000));
