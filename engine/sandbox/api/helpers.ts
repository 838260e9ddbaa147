/**
 * Functions available as globals inside the sandbox. Hashing, lookups, logging, counters and DNS are carried out by the
 * host; nothing else (process, require, fs, network, timers) exists in a script's world.
 */
import type { AcceptVerdict, DeferVerdict, DeliverVerdict, HeaderEdit, RejectVerdict } from './verdicts.ts';

/** What rate() answers. */
export interface RateResult {
  /** True when this call was within the limit; it was then counted. */
  readonly allowed: boolean;
  /** Calls counted in the current window, this one included when allowed. */
  readonly count: number;
  /** Seconds until the window ends and the count starts again from 0. */
  readonly resetSeconds: number;
}

/** A named counter in the store (see counter()). Frozen, as rate()'s answers and `dns` are: read-only here. */
export interface Counter {
  /** Its value; 0 when it does not exist or has expired. */
  readonly get: () => Promise<number>;
  /** Add `n` (a whole number, may be negative); a new counter expires `ttlSeconds` after this first add. The new value. */
  readonly add: (n: number, ttlSeconds: number) => Promise<number>;
}

/** An MX record of dns.resolve(name, 'MX'). */
export interface MxRecord {
  /** Host name, lowercase, without the trailing dot. */
  exchange: string;
  priority: number;
}

/** Why a lookup has no answer: no reply in time, SERVFAIL, REFUSED, not a domain name, anything else. */
export type DnsFailure = 'timeout' | 'servfail' | 'refused' | 'badname' | 'error';

/**
 * What dns.resolve() answers. `ok: true` is an answer from DNS — also "no such name" (`nxdomain: true`, no
 * records) and "no record of this type" (no records). `ok: false`: the answer is unknown.
 */
export type DnsResult<R> =
  | {
    ok: true;
    records: R[];
    /** Seconds the answer may still be kept (A and AAAA); null where node:dns gives no TTL (MX, TXT, PTR, no records). */
    ttl: number | null;
    nxdomain: boolean;
  }
  | { ok: false; error: DnsFailure; message: string };

/** What dnsbl() answers. */
export type DnsblResult =
  | {
    ok: true;
    /** An A record in 127.0.0.0/8 was found for the address. */
    listed: boolean;
    /** The A records found (each list says what its codes mean). */
    codes: string[];
    /** The name asked, e.g. `2.0.0.127.zen.example` (for a TXT lookup of the reason). */
    query: string;
  }
  | { ok: false; error: DnsFailure; message: string; query: string };

/** Per call: a shorter timeout than `dns.timeoutMs`, or a rejection instead of `ok: false`. */
export interface DnsOptions {
  /** Milliseconds, 1 to 60000; never more than `dns.timeoutMs`. */
  timeoutMs?: number;
  /** Reject (an Error naming the failure) instead of answering `ok: false`; uncaught, the hook fails closed. */
  throw?: boolean;
}

/** The `dns` global: lookups on the configured servers (`dns.servers`), cached (see docs/scripts.md § DNS). */
export interface Dns {
  readonly resolve: {
    /** A, AAAA, TXT (each record's strings joined) or PTR (`name` may be an IP address) records. */
    (name: string, type: 'A' | 'AAAA' | 'TXT' | 'PTR', options?: DnsOptions): Promise<DnsResult<string>>;
    /** MX records, lowest priority first. */
    (name: string, type: 'MX', options?: DnsOptions): Promise<DnsResult<MxRecord>>;
  };
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
  /** DNS lookups (A, AAAA, MX, TXT, PTR). Failures are results (`ok: false`), unless `{ throw: true }`. */
  dns: Dns;
  /**
   * Is `ip` (IPv4 or IPv6) listed in the DNS blocklist `zone` (e.g. `zen.spamhaus.org`)? Asks the A record
   * of the reversed address under the zone (an IPv4-mapped address, `::ffff:192.0.2.1`, as its IPv4 address).
   * An answer in 127.255.255.0/24 (the list refusing this resolver)
   * is `{ ok: false, error: "refused" }`, never a listing.
   */
  dnsbl(zone: string, ip: string, options?: DnsOptions): Promise<DnsblResult>;
  /** Log a line to the server log, tagged with the connection id and script file. */
  log(...args: unknown[]): void;
  /** Verdict builders. */
  /** `headers`: the data hook's header edits (see HeaderEdit); `hold`: the data hook's hold (see AcceptVerdict). */
  accept(options?: { username?: string; text?: string; headers?: HeaderEdit[]; hold?: string }): AcceptVerdict;
  reject(text?: string, options?: { code?: number; enhanced?: string; disconnect?: boolean }): RejectVerdict;
  defer(text?: string, options?: { code?: number; enhanced?: string; disconnect?: boolean }): DeferVerdict;
  deliver(options?: Omit<DeliverVerdict, 'verdict'>): DeliverVerdict;
}
