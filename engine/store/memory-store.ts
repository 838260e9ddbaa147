/**
 * The default store: counters in this process's memory. Answers at once and never fails. In a
 * multi-process server the supervisor holds one of these and the workers reach it over IPC.
 *
 * Bounded: scripts name their own keys (`rate('per-sender:' + address, …)`), so a client that makes a
 * script count millions of distinct keys must not exhaust the server's memory. Scripts' keys, the
 * built-in limits' keys (`limit:…`), shadow scripts' keys (`shadow:…`) and the addresses that logged in as
 * an account (`limit:authok:…`, made only by logins) are held apart, each at most
 * `maxKeys`: when one side is full, its expired keys are swept out, and if that frees nothing the keys
 * created longest ago are dropped (their counts start again from 0) — first those not at their limit, so
 * that a flood of new keys cannot undo a refusal (see BoundedCounters). Scripts can therefore
 * never push out a built-in limit's count, nor a candidate run in shadow a live script's.
 */
import { MemoryAuthFailureStore, type AuthFailureStore } from '../auth/failure-limiter.ts';
import { KNOWN_ADDRESS_KEY_PREFIX, SHADOW_KEY_PREFIX, type CounterStore, type ImmediateCounterStore, type RateResult } from './counter-store.ts';

interface Entry { value: number; expiresAt: number }

/** Entries kept before expired ones are swept out (then twice the live count, so a sweep is rare). */
const SWEEP_FLOOR = 10_000;
/** Keys held per side (scripts', built-in) unless told otherwise: a key is at most ~1 KiB, so ~100 MiB at most. */
export const DEFAULT_MAX_KEYS = 100_000;
/** At a full side, a sweep runs at most this often (ms): between sweeps the oldest keys are dropped. */
const FULL_SWEEP_INTERVAL_MS = 1000;

export interface MemoryStoreOptions {
  /** Keys held on each side before old ones are dropped (default DEFAULT_MAX_KEYS). */
  maxKeys?: number;
  /**
   * Told when keys were dropped to stay within `maxKeys` (the number since last told, and how many of them were
   * refusing, at their rate() limit: only when nearly every key was; at most once a second).
   */
  onEvict?(dropped: number, maxKeys: number, refusingDropped: number): void;
}

/**
 * One side of the store (scripts' keys, or the built-in limits'), bounded. The keys that reached their rate()
 * limit (refusing) are held apart from the others, and dropped only when the others are too few to make room:
 * dropping a refusing key undid its refusal. A mail bomber refused by a per-recipient rate() made the store
 * count a few thousand new recipients, and its victim's count started again from 0; an address refused by
 * limits.connectionRatePerIp came back once enough other addresses had connected.
 */
class BoundedCounters {
  /** Keys below their limit (or counter() keys, which have none the store knows of), oldest first. */
  readonly #counting = new Map<string, Entry>();
  /** Keys at their rate() limit, in the order they reached it. */
  readonly #refusing = new Map<string, Entry>();
  readonly #maxKeys: number;
  readonly #onEvict: MemoryStoreOptions['onEvict'];
  #sweepAt: number;
  #lastFullSweep = -Infinity;
  #droppedSinceTold = 0;
  #refusingDroppedSinceTold = 0;
  #lastTold = -Infinity;

  constructor(maxKeys: number, onEvict: MemoryStoreOptions['onEvict']) {
    this.#maxKeys = maxKeys;
    this.#onEvict = onEvict;
    this.#sweepAt = Math.min(SWEEP_FLOOR, maxKeys);
  }

  get size(): number {
    return this.#counting.size + this.#refusing.size;
  }

  clear(): void {
    this.#counting.clear();
    this.#refusing.clear();
  }

  live(key: string, now: number): Entry | undefined {
    const entry = this.#counting.get(key) ?? this.#refusing.get(key);
    if (entry && entry.expiresAt <= now) {
      this.#counting.delete(key);
      this.#refusing.delete(key);
      return undefined;
    }
    return entry;
  }

  create(key: string, expiresAt: number, now: number): Entry {
    if (this.size >= this.#maxKeys) this.#makeRoom(now);
    else if (this.size >= this.#sweepAt) this.#sweep(now);
    const entry = { value: 0, expiresAt };
    this.#counting.set(key, entry);
    return entry;
  }

  /** `key` (live) is at its rate() limit: kept over the keys that are not, until its window ends. */
  refusing(key: string, entry: Entry): void {
    if (this.#counting.delete(key)) this.#refusing.set(key, entry);
  }

  /** `key` (live) is below its limit again (raised by a reload, or another call's): no longer kept over the others. */
  allowing(key: string, entry: Entry): void {
    if (this.#refusing.delete(key)) this.#counting.set(key, entry);
  }

  /** Drop expired entries, so that keys used once (rotating addresses, identities) do not pile up. */
  #sweep(now: number): void {
    for (const map of [this.#counting, this.#refusing]) for (const [key, entry] of map) if (entry.expiresAt <= now) map.delete(key);
    this.#sweepAt = Math.min(this.#maxKeys, Math.max(SWEEP_FLOOR, 2 * this.size));
  }

  /**
   * Full: sweep (not more than once a second: a sweep walks every key), else drop the keys created longest ago
   * that are not refusing; only when those are too few, the refusing keys that reached their limit longest ago
   * (the side must stay bounded, and refusing new keys instead would refuse every newcomer until those windows end).
   */
  #makeRoom(now: number): void {
    if (now - this.#lastFullSweep >= FULL_SWEEP_INTERVAL_MS) {
      this.#lastFullSweep = now;
      this.#sweep(now);
    }
    // A Map iterates in insertion order: the first keys are the oldest. One in a hundred at a time, so that a
    // flood of new keys costs a drop per key, not a walk per key.
    let drop = this.size - this.#maxKeys + 1;
    if (drop <= 0) return;
    drop = Math.max(drop, Math.ceil(this.#maxKeys / 100));
    // Refusing keys whose window has ended refuse nothing: they go before live counts (between two sweeps they
    // were kept, and live keys dropped). Those that reached their limit first lead; stopped at the first live one.
    drop -= this.#dropExpiredLeaders(this.#refusing, drop, now);
    drop -= this.#dropOldest(this.#counting, drop);
    // A live refusal is dropped only when no refusing key has ended its window, wherever it stands: a key refused for
    // an hour led keys refused for a second, and went while they, ended, were kept (until the next sweep). A walk
    // here is rare: each drops at least a hundredth of the side, so it comes once per that many new keys at most.
    if (drop > 0) drop -= this.#dropExpired(this.#refusing, drop, now);
    if (drop > 0) this.#refusingDroppedSinceTold += this.#dropOldest(this.#refusing, drop);
    if (now - this.#lastTold >= FULL_SWEEP_INTERVAL_MS) {
      this.#lastTold = now;
      const dropped = this.#droppedSinceTold;
      const refusingDropped = this.#refusingDroppedSinceTold;
      this.#droppedSinceTold = this.#refusingDroppedSinceTold = 0;
      try { this.#onEvict?.(dropped, this.#maxKeys, refusingDropped); } catch { /* telling must not fail a count */ }
    }
  }

  /** Up to `count` of the first keys of `map` dropped while their window has ended; how many were. */
  #dropExpiredLeaders(map: Map<string, Entry>, count: number, now: number): number {
    let dropped = 0;
    for (const [key, entry] of map) {
      if (dropped >= count || entry.expiresAt > now) break;
      map.delete(key);
      dropped++;
    }
    return dropped; // not told: their counts had ended, as a sweep's
  }

  /** Up to `count` keys of `map` whose window has ended dropped, wherever they stand; how many were. */
  #dropExpired(map: Map<string, Entry>, count: number, now: number): number {
    let dropped = 0;
    for (const [key, entry] of map) {
      if (dropped >= count) break;
      if (entry.expiresAt > now) continue;
      map.delete(key);
      dropped++;
    }
    return dropped; // not told: their counts had ended, as a sweep's
  }

  /** Up to `count` of the first keys of `map` dropped; how many were. */
  #dropOldest(map: Map<string, Entry>, count: number): number {
    let dropped = 0;
    for (const key of map.keys()) {
      if (dropped >= count) break;
      map.delete(key);
      dropped++;
    }
    this.#droppedSinceTold += dropped;
    return dropped;
  }
}

export class MemoryCounterStore implements CounterStore, ImmediateCounterStore {
  readonly kind = 'memory';
  readonly #scripts: BoundedCounters;
  readonly #builtin: BoundedCounters;
  /**
   * Shadow scripts' keys: kept with the live scripts', a candidate that counts a key per message (the
   * change being tried out) dropped the live scripts' counts, and their limits started again from 0.
   */
  readonly #shadow: BoundedCounters;
  /**
   * The addresses that logged in as an account (exempt from its limits.authFailuresPerAccount lock). Kept with the
   * other built-in keys, the oldest of all, they were the first dropped when a stranger made the store count a
   * thousand new keys (guesses at made-up names, connections from new addresses): then five guesses locked the
   * user out of her own address. Here only logins make keys.
   */
  readonly #knownAddresses: BoundedCounters;
  readonly #now: () => number;
  readonly #authFailures = new MemoryAuthFailureStore();

  /** `now`: milliseconds on a clock that never goes back (tests pass their own). */
  constructor(now: () => number = () => performance.now(), options: MemoryStoreOptions = {}) {
    this.#now = now;
    const maxKeys = options.maxKeys ?? DEFAULT_MAX_KEYS;
    if (!Number.isSafeInteger(maxKeys) || maxKeys < 1) throw new RangeError(`maxKeys must be a positive whole number, not ${maxKeys}`);
    this.#scripts = new BoundedCounters(maxKeys, options.onEvict);
    this.#builtin = new BoundedCounters(maxKeys, options.onEvict);
    this.#shadow = new BoundedCounters(maxKeys, options.onEvict);
    this.#knownAddresses = new BoundedCounters(maxKeys, options.onEvict);
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
    const side = this.#side(key);
    let entry = side.live(key, now);
    // A window opened longer than `windowSeconds` (shortened by a reload since) ends no later than one opened now.
    if (entry && entry.expiresAt > now + windowSeconds * 1000) entry.expiresAt = now + windowSeconds * 1000;
    if (entry && entry.value >= limit) {
      side.refusing(key, entry); // (a limit lowered since it was counted)
      return { allowed: false, count: entry.value, resetSeconds: resetSeconds(entry, now) };
    }
    if (entry) side.allowing(key, entry);
    entry ??= side.create(key, now + windowSeconds * 1000, now);
    entry.value++;
    if (entry.value >= limit) side.refusing(key, entry); // the next call is refused
    return { allowed: true, count: entry.value, resetSeconds: resetSeconds(entry, now) };
  }

  getNow(key: string): number {
    return this.#side(key).live(key, this.#now())?.value ?? 0;
  }

  addNow(key: string, n: number, ttlSeconds: number): number {
    const now = this.#now();
    const side = this.#side(key);
    const entry = side.live(key, now) ?? side.create(key, now + ttlSeconds * 1000, now);
    entry.value += n;
    return entry.value;
  }

  authFailures(): AuthFailureStore {
    return this.#authFailures;
  }

  /** Keys held now, expired ones not yet swept included (tests). */
  get size(): number {
    return this.#scripts.size + this.#builtin.size + this.#shadow.size + this.#knownAddresses.size;
  }

  close(): Promise<void> {
    this.#scripts.clear();
    this.#builtin.clear();
    this.#shadow.clear();
    this.#knownAddresses.clear();
    return Promise.resolve();
  }

  /**
   * The built-in limits' keys (STORE_KEYS.messagesPerIdentity, …) are `limit:…` (those of addresses that logged in
   * apart), shadow scripts' `shadow:…`; anything else is a script's.
   */
  #side(key: string): BoundedCounters {
    if (key.startsWith(KNOWN_ADDRESS_KEY_PREFIX)) return this.#knownAddresses;
    return key.startsWith('limit:') ? this.#builtin : key.startsWith(SHADOW_KEY_PREFIX) ? this.#shadow : this.#scripts;
  }
}

// To the whole millisecond first: the clock is fractional (performance.now()), and a window just opened left
// 60000.00000000001 ms of a 60 s one, which ceil made 61 s, more than the window.
const resetSeconds = (entry: Entry, now: number): number => Math.max(0, Math.ceil(Math.round(entry.expiresAt - now) / 1000));
