/**
 * Functions available as globals inside the sandbox. Hashing, lookups, logging and counters are carried out by the
 * host; nothing else (process, require, fs, network, timers) exists in a script's world.
 */
import type { AcceptVerdict, DeferVerdict, DeliverVerdict, HeaderEdit, RejectVerdict } from './verdicts.ts';

/** What rate() answers. */
export interface RateResult {
  /** True when this call was within the limit; it was then counted. */
  allowed: boolean;
  /** Calls counted in the current window, this one included when allowed. */
  count: number;
  /** Seconds until the window ends and the count starts again from 0. */
  resetSeconds: number;
}

/** A named counter in the store (see counter()). */
export interface Counter {
  /** Its value; 0 when it does not exist or has expired. */
  get(): Promise<number>;
  /** Add `n` (a whole number, may be negative); a new counter expires `ttlSeconds` after this first add. The new value. */
  add(n: number, ttlSeconds: number): Promise<number>;
}

export interface PosternHelpers {
  /** Hex digest of a UTF-8 string. */
  sha1(data: string): string;
  sha256(data: string): string;
  md5(data: string): string;
  /** Hex HMAC of `data` with `key`. */
  hmac(algorithm: 'sha1' | 'sha256' | 'sha512' | 'md5', key: string, data: string): string;
  /**
   * Value for `key` in the lookup table `table` (declared under `tables` in the configuration), or null.
   * A null or undefined key (a fingerprint Postfix did not send) finds nothing.
   */
  lookup(table: string, key: string | null | undefined): string | null;
  /**
   * Count one call of `key` when fewer than `limit` were counted in its window (a fixed window of
   * `windowSeconds` that opens with the first counted call). Kept in the configured store (memory or Redis),
   * so every script, listener and — with Redis — server sharing the store counts together. Rejects when the
   * store cannot answer (unreachable, `store.redis.timeoutMs`): uncaught, the hook fails closed (451 4.3.0).
   * `key`: 1 to 1024 characters; `limit`: 1 to 10⁹; `windowSeconds`: 1 to 31 622 400 (366 days).
   */
  rate(key: string, limit: number, windowSeconds: number): Promise<RateResult>;
  /** The counter `key` of the store (scripts' counters are apart from rate()'s keys). */
  counter(key: string): Counter;
  /** Log a line to the server log, tagged with the connection id and script file. */
  log(...args: unknown[]): void;
  /** Verdict builders. */
  /** `headers`: the data hook's header edits (see HeaderEdit). */
  accept(options?: { username?: string; text?: string; headers?: HeaderEdit[] }): AcceptVerdict;
  reject(text?: string, options?: { code?: number; enhanced?: string; disconnect?: boolean }): RejectVerdict;
  defer(text?: string, options?: { code?: number; enhanced?: string; disconnect?: boolean }): DeferVerdict;
  deliver(options?: Omit<DeliverVerdict, 'verdict'>): DeliverVerdict;
}
