/**
 * Counters with an expiry, kept in this process (memory) or in Redis, for rate limits that scripts and
 * the built-in limits share. A store answers asynchronously and may fail (Redis unreachable, timeout):
 * every caller treats a failure as "refuse, temporarily" (fail closed), never as "allow".
 */
import type { AuthFailureStore } from '../auth/failure-limiter.ts';

/** The outcome of one rate() call. */
export interface RateResult {
  /** True when the call was within the limit, and was counted. */
  allowed: boolean;
  /** Calls counted in the current window, this one included when allowed. */
  count: number;
  /** Seconds until the window ends and the count starts again from 0 (rounded up; 0 when no window is open). */
  resetSeconds: number;
}

/**
 * A store that answers at once, without waiting for I/O (this process's memory). A script's call then
 * completes within its turn in the isolate, so an `async` hook using it stays on the sandbox's fast path.
 */
export interface ImmediateCounterStore {
  rateNow(key: string, limit: number, windowSeconds: number): RateResult;
  getNow(key: string): number;
  addNow(key: string, n: number, ttlSeconds: number): number;
}

/**
 * What the rest of Postern needs of a store. Keys are full keys: callers put their namespace in front
 * (see STORE_KEYS). A store for the worker processes of one multi-process server forwards these calls to
 * the process that holds a MemoryCounterStore, the calls of one turn in one message.
 */
export interface CounterStore {
  /** `memory` or `redis`, for logs. */
  readonly kind: string;
  /** Set when the store can answer at once (see ImmediateCounterStore). */
  readonly immediate?: ImmediateCounterStore;
  /**
   * Count one call of `key` when fewer than `limit` were counted in its window. The window opens with the
   * first counted call and lasts `windowSeconds`; when it ends the count starts from 0 again.
   */
  rate(key: string, limit: number, windowSeconds: number): Promise<RateResult>;
  /** The value of counter `key` (0 when it does not exist or has expired). */
  get(key: string): Promise<number>;
  /** Add `n` (may be negative) to counter `key`; a new counter expires `ttlSeconds` after this call. The new value. */
  add(key: string, n: number, ttlSeconds: number): Promise<number>;
  /** The per-IP failed-AUTH times (AuthFailureLimiter), kept in this store. */
  authFailures(): AuthFailureStore;
  /**
   * Open-connection slots kept in the store, for `limits.connectionsPerIpInStore`: only a store shared
   * between servers (Redis) has them; without, each server's own count is the only one.
   */
  readonly connectionSlots?: ConnectionSlots;
  /** A store in another server (Redis): true while it cannot be reached or refuses commands, so every call fails closed. */
  readonly unreachable?: boolean;
  close(): Promise<void>;
}


/**
 * One place of a count taken with rate() given back: the count less one, never below 0. The window may have ended
 * while the place was held (the count gone with it): a count of -1 opened the next window one place larger, one
 * more guess for whoever came next. Two calls, not one: a rate() counted between them is still counted once.
 */
export async function giveBackPlace(store: Pick<CounterStore, 'add'>, key: string, windowSeconds: number): Promise<void> {
  if (await store.add(key, -1, windowSeconds) < 0) await store.add(key, 1, windowSeconds);
}
/**
 * Slots for open connections, one lease per connection: held while the connection is open (renewed by
 * the process that holds it), given back at close, and expired by the store when that process is gone.
 */
export interface ConnectionSlots {
  /**
   * Take a slot under `key` when fewer than `limit` are held; the returned function gives it back (once;
   * later calls do nothing). Null: the limit is reached, nothing was taken. Rejects with StoreUnavailable.
   */
  acquire(key: string, limit: number): Promise<(() => void) | null>;
}

/**
 * The keys of addresses that logged in as an account (STORE_KEYS.accountKnownAddress): made only by a right password or
 * certificate, so the memory store holds them apart from the keys any client can make (see MemoryCounterStore).
 */
export const KNOWN_ADDRESS_KEY_PREFIX = 'limit:authok:';

/** The namespaces under the configured key prefix: scripts' keys can never reach the built-in ones. */
export const STORE_KEYS = {
  scriptRate: (key: string) => `script:rate:${key}`,
  scriptCounter: (key: string) => `script:counter:${key}`,
  messagesPerIdentity: (identity: string) => `limit:messages:${identity}`,
  authFailures: (ip: string) => `limit:authfail:${ip}`,
  /** Failed password guesses at one account (limits.authFailuresPerAccount: auth/account-failures.ts). */
  accountAuthFailures: (account: string) => `limit:authfail-account:${account}`,
  /** An address (IPv6: its counted network) that logged in as the account in a period (account-failures.ts): exempt from its lock. */
  accountKnownAddress: (account: string, ip: string, period: number) => `${KNOWN_ADDRESS_KEY_PREFIX}${period}:${ip}:${account}`,
  /** AUTH guesses being decided (AuthFailureStore.claim). */
  authGuesses: (ip: string) => `limit:authguess:${ip}`,
  connections: (listener: string, ip: string) => `limit:conn:${listener}:${ip}`,
  connectionRate: (listener: string, ip: string) => `limit:connrate:${listener}:${ip}`,
} as const;

/** Put in front of every key of shadow scripts (prefixedStore): their counts apart from the live scripts'. */
export const SHADOW_KEY_PREFIX = 'shadow:';

/** A store call failed (unreachable, timed out, refused): the caller must refuse temporarily. */
export class StoreUnavailable extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailable';
  }
}
