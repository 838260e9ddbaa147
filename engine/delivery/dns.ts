/**
 * Name lookups for delivery: MX records of a recipient domain and the addresses of a host, with a short
 * cache. DNS errors become DeliveryFailures: NXDOMAIN, and a name DNS cannot hold, are permanent for a
 * recipient domain; anything else (SERVFAIL, REFUSED, timeouts, no resolver) is temporary.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { DeliveryFailure } from './outcome.ts';
import { budgetResolver, withinBudget } from '../dns/within-budget.ts';
import { AnswerCache } from '../dns/answer-cache.ts';
import { envKnob } from '../config/env-knob.ts';

export interface MxRecord { exchange: string; priority: number }

/** What routing needs from DNS; tests substitute their own. */
export interface DeliveryResolver {
  /** MX records, `[]` when the domain exists without MX (fall back to A/AAAA). Throws DeliveryFailure. */
  mx(domain: string): Promise<MxRecord[]>;
  /** IPv4 and IPv6 addresses of a host, IPv4 first. Throws DeliveryFailure. */
  addresses(host: string): Promise<string[]>;
}

export interface ResolverOptions {
  /** DNS servers (`address` or `address:port`); default: the system's. */
  servers?: string[];
  /** `dns`: A/AAAA queries; `native`: getaddrinfo (honours /etc/hosts), like Postfix smtp_host_lookup. */
  hostLookup: 'dns' | 'native';
  /** The longest one try waits; a query is asked again until twice this has passed (within-budget.ts). */
  timeoutMs?: number;
}

const CACHE_MS = 60_000;
/** Lookups kept (answer-cache.ts: names looked up once go before names looked up again). */
export const MAX_CACHED = 10_000;
/**
 * How long a lookup that timed out is answered from the cache with that failure. Every attempt for a domain whose
 * DNS does not answer held a delivery slot for the resolver's whole timeout (10 s: within-budget.ts), and another the
 * moment the last had failed: a backlog for one such domain kept the queue runner's slots busy for hours, and
 * the other deferred mail waited behind it. (An answer that says no, or SERVFAIL, comes back at once: not kept.)
 */
const TIMEOUT_CACHE_MS = 30_000;
/** Failures of lookups that timed out (TIMEOUT_CACHE_MS). */
const timedOut = new WeakSet<object>();
/**
 * Records kept of one answer: MX records by priority, addresses IPv4 first. A transaction looks up at most
 * 10 next-hop names and tries at most 5 addresses (transaction.ts); a domain's DNS chooses how many it answers
 * (2 500 MX records in one UDP answer: 157 KB each in the cache, whose 10 000 entries then held ~1.5 GB).
 */
export const MAX_RECORDS = 20;
const NOT_FOUND = new Set(['ENOTFOUND', 'NXDOMAIN']);
const NO_DATA = new Set(['ENODATA', 'NODATA']);

/** The longest one try of a delivery lookup waits (a lookup: two tries' time, within-budget.ts). */
export const DEFAULT_DNS_TRY_MS = 5000;
/**
 * DEFAULT_DNS_TRY_MS, or POSTERN_DNS_TRY_MS: a test of a DNS server that never answers shortens the 10 s it waits out.
 * Read at each resolver made (the queue runner makes one per delivery configuration), so a test sets it before its server.
 */
export const dnsTryMs = (): number => envKnob('POSTERN_DNS_TRY_MS', DEFAULT_DNS_TRY_MS);

export function createResolver(opts: ResolverOptions): DeliveryResolver {
  const tryMs = opts.timeoutMs ?? dnsTryMs();
  const resolver = budgetResolver(tryMs, opts.servers);
  const ask = <T>(query: () => Promise<T>): Promise<T> => withinBudget(2 * tryMs, query, tryMs);
  // Names looked up once (a bounce to each of a spammer's made-up sender domains) push out only each other.
  const cache = new AnswerCache<{ until: number; value: Promise<unknown>; chars: 0 }>(MAX_CACHED, Infinity);
  const cached = <T>(key: string, fn: () => Promise<T>): Promise<T> => {
    const hit = cache.use(key);
    if (hit && hit.until > performance.now()) return hit.value as Promise<T>; // monotonic: a clock set back must not keep answers longer
    const entry = { until: performance.now() + CACHE_MS, value: fn() as Promise<unknown>, chars: 0 as const };
    cache.set(key, entry);
    entry.value.catch((err: unknown) => {
      if (!cache.holds(key, entry)) return;
      // Other failures are not cached.
      if (timedOut.has(err as object)) entry.until = performance.now() + TIMEOUT_CACHE_MS;
      else cache.delete(key);
    });
    return entry.value as Promise<T>;
  };

  return {
    mx(domain) {
      return cached(`mx ${domain}`, async () => {
        try {
          const records = await ask(() => resolver.resolveMx(domain));
          return records.sort((a, b) => a.priority - b.priority).slice(0, MAX_RECORDS)
            .map((r) => ({ exchange: r.exchange.replace(/\.$/, '').toLowerCase(), priority: r.priority }));
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code ?? '';
          if (NO_DATA.has(code)) return [];
          if (NOT_FOUND.has(code)) {
            throw new DeliveryFailure(`Host or domain name not found. Name service error for name=${domain} type=MX: Host not found`, { permanent: true, enhanced: '5.1.2' });
          }
          if (code === 'EBADNAME') throw new DeliveryFailure(badName(domain), { permanent: true, enhanced: '5.1.2' });
          throw noted(new DeliveryFailure(`Name service error for name=${domain} type=MX: ${code || (err as Error).message}`, { permanent: false, enhanced: '4.4.3' }), code);
        }
      });
    },
    addresses(host) {
      if (isIP(host)) return Promise.resolve([host]);
      return cached(`addr ${host}`, async () => {
        if (opts.hostLookup === 'native') {
          try {
            const all = await lookup(host, { all: true });
            return [...all.filter((a) => a.family === 4), ...all.filter((a) => a.family === 6)].slice(0, MAX_RECORDS).map((a) => a.address);
          } catch (err) {
            const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
            throw noted(hostFailure(host, code), code);
          }
        }
        const [v4, v6] = await Promise.allSettled([ask(() => resolver.resolve4(host)), ask(() => resolver.resolve6(host))]);
        const addresses = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
        if (addresses.length) return addresses.slice(0, MAX_RECORDS);
        const codes = [v4, v6].map((r) => (r.status === 'rejected' ? (r.reason as NodeJS.ErrnoException).code ?? '' : 'ENODATA'));
        const code = codes.find((c) => !NOT_FOUND.has(c) && !NO_DATA.has(c)) ?? codes[0]!;
        throw noted(hostFailure(host, code), code);
      });
    },
  };
}

/** The host has no address (NXDOMAIN or no A/AAAA): temporary for a next hop, permanent for a bare domain. */
export class HostNotFound extends DeliveryFailure {
  readonly host: string;
  constructor(host: string) {
    super(`Host or domain name not found. Name service error for name=${host} type=A: Host not found`, { permanent: false, enhanced: '4.4.4' });
    this.host = host;
  }
}

/** `failure`, marked as a timed-out lookup when `code` says so (see TIMEOUT_CACHE_MS). */
function noted(failure: DeliveryFailure, code: string): DeliveryFailure {
  if (code === 'ETIMEOUT') timedOut.add(failure);
  return failure;
}

/**
 * A name DNS cannot hold (a label over 63 octets, a name over 253: smtp-server takes `RCPT TO:<a@{70 × x}.test>`):
 * no server is asked, and asking again cannot help. It was a temporary failure, retried until the queue lifetime.
 */
function badName(name: string): string {
  return `Host or domain name not found. Name service error for name=${name}: not a valid domain name (a label over 63 or a name over 253 characters)`;
}

function hostFailure(host: string, code: string): DeliveryFailure {
  if (NOT_FOUND.has(code) || NO_DATA.has(code) || code === 'EBADNAME') return new HostNotFound(host);
  return new DeliveryFailure(`Name service error for name=${host} type=A: ${code}`, { permanent: false, enhanced: '4.4.3' });
}
