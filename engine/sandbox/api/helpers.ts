/**
 * Functions available as globals inside the sandbox. Hashing, lookups and logging are carried out by the
 * host; nothing else (process, require, fs, network, timers) exists in a script's world.
 */
import type { AcceptVerdict, DeferVerdict, DeliverVerdict, RejectVerdict } from './verdicts.ts';

export interface PosternHelpers {
  /** Hex digest of a UTF-8 string. */
  sha1(data: string): string;
  sha256(data: string): string;
  md5(data: string): string;
  /** Hex HMAC of `data` with `key`. */
  hmac(algorithm: 'sha1' | 'sha256' | 'sha512' | 'md5', key: string, data: string): string;
  /** Value for `key` in the lookup table `table` (declared under `tables` in the configuration), or null. */
  lookup(table: string, key: string): string | null;
  /** Log a line to the server log, tagged with the connection id and script file. */
  log(...args: unknown[]): void;
  /** Verdict builders. */
  accept(options?: { username?: string; text?: string }): AcceptVerdict;
  reject(text?: string, options?: { code?: number; enhanced?: string; disconnect?: boolean }): RejectVerdict;
  defer(text?: string, options?: { code?: number; enhanced?: string; disconnect?: boolean }): DeferVerdict;
  deliver(options?: Omit<DeliverVerdict, 'verdict'>): DeliverVerdict;
}
