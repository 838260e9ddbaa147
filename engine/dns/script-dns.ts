/**
 * DNS for policy scripts (`dns.resolve()`, `dnsbl()`): node:dns's Resolver on the configured servers,
 * each lookup bounded by a timeout, answers kept in a small cache. Failures are results, not exceptions:
 * `ok: false` says the answer is unknown (timeout, SERVFAIL, refused); a name that does not exist, or has
 * no record of the type, is an answer (`ok: true`, no records).
 *
 * TTLs: node:dns gives them for A and AAAA only. Those answers are kept for their TTL (at most
 * MAX_CACHE_SECONDS); MX, TXT and PTR answers, and "no such name / no such record" (whose TTL would come
 * from the SOA, which node:dns does not return), for FIXED_CACHE_SECONDS. Failures are not kept.
 */
import type { Resolver } from 'node:dns/promises';
import { isIP, isIPv4 } from 'node:net';
import { canonicalIp } from '../addresses/ip-text.ts';
import { domainToASCII } from 'node:url';
import { budgetResolver, withinBudget } from './within-budget.ts';
import { AnswerCache } from './answer-cache.ts';
import { deadlineAfterReads } from '../timing/deadline-after-reads.ts';

export type DnsType = 'A' | 'AAAA' | 'MX' | 'TXT' | 'PTR';
export const DNS_TYPES: readonly DnsType[] = ['A', 'AAAA', 'MX', 'TXT', 'PTR'];

export interface MxRecord { exchange: string; priority: number }
export type DnsRecord = string | MxRecord;
export type DnsFailure = 'timeout' | 'servfail' | 'refused' | 'badname' | 'error';

export type DnsAnswer =
  | { ok: true; records: DnsRecord[]; ttl: number | null; nxdomain: boolean }
  | { ok: false; error: DnsFailure; message: string };

export type DnsblAnswer =
  | { ok: true; listed: boolean; codes: string[]; query: string }
  | { ok: false; error: DnsFailure; message: string; query: string };

export interface ScriptDnsOptions {
  /** `address` or `address:port`; empty: the system's. */
  servers: string[];
  /** The most one lookup may take; a script may ask for less. */
  timeoutMs: number;
}

/** Kept answers before the oldest go (answer-cache.ts: names asked once go before names asked again). */
export const MAX_ENTRIES = 10_000;
/**
 * And the characters of their records, all together, before the oldest go: an answer can be 64 KB (a TXT record
 * of many strings, or thousands of A records, over UDP), so 10 000 names that a sender's domain controls
 * (`dns.resolve(ctx.address.domain, 'TXT')` at MAIL FROM, one subdomain a message) held ~620 MB in each process.
 */
export const MAX_CACHED_CHARS = 8 * 1024 * 1024;
const MAX_CACHE_SECONDS = 3600;
export const FIXED_CACHE_SECONDS = 60;

interface Entry { until: number; answer: Promise<DnsAnswer>; chars: number }

/** About what an answer holds: the characters of its records (and a little for each record). */
function charsOf(a: DnsAnswer): number {
  if (!a.ok) return 0;
  let chars = 0;
  for (const r of a.records) chars += 16 + (typeof r === 'string' ? r.length : r.exchange.length);
  return chars;
}

export class ScriptDns {
  readonly timeoutMs: number;
  readonly #resolver: Resolver;
  /** Sizes of settled answers in charsOf() units (in flight: 0). */
  readonly #cache = new AnswerCache<Entry>(MAX_ENTRIES, MAX_CACHED_CHARS);
  readonly #now: () => number;

  constructor(options: ScriptDnsOptions, now: () => number = () => performance.now()) {
    this.timeoutMs = options.timeoutMs;
    this.#resolver = budgetResolver(options.timeoutMs, options.servers);
    this.#now = now;
  }

  /** `name` of a PTR query may be an address (its in-addr.arpa / ip6.arpa name is asked). */
  resolve(name: string, type: DnsType, timeoutMs = this.timeoutMs): Promise<DnsAnswer> {
    if (!askable(name)) return Promise.resolve({ ok: false, error: 'badname', message: `not a domain name: ${JSON.stringify(name)}` });
    const query = type === 'PTR' && isIP(name) ? reverseName(name) : name.replace(/\.$/, '').toLowerCase();
    const key = `${type} ${query}`;
    const now = this.#now();
    const hit = this.#cache.use(key);
    const limit = Math.min(timeoutMs, this.timeoutMs);
    if (hit && hit.until > now) return withTimeout(hit.answer.then((a) => aged(a, hit.until, this.#now())), limit, query, type);
    const answer = this.#lookup(query, type);
    // In flight: later callers share it; settled, kept for its TTL (failures are dropped).
    const entry: Entry = { until: Infinity, answer, chars: 0 };
    this.#cache.set(key, entry);
    void answer.then((a) => {
      if (!this.#cache.holds(key, entry)) return; // pushed out meanwhile
      if (!a.ok) {
        this.#cache.delete(key);
        return;
      }
      entry.until = this.#now() + 1000 * (a.ttl ?? FIXED_CACHE_SECONDS);
      this.#cache.resize(key, entry, charsOf(a));
    });
    return withTimeout(answer, limit, query, type);
  }

  /** Is `ip` listed in the DNS blocklist `zone`? Asks the A record of the reversed address under the zone. */
  async dnsbl(zone: string, ip: string, timeoutMs = this.timeoutMs): Promise<DnsblAnswer> {
    const query = `${reverseLabels(ip)}.${zone.replace(/^\.|\.$/g, '')}`;
    const a = await this.resolve(query, 'A', timeoutMs);
    if (!a.ok) return { ...a, query };
    const codes = a.records as string[];
    // 127.255.255.x: the list refuses to answer this resolver (Spamhaus's "blocked query" codes); not a listing.
    const refused = codes.find((c) => c.startsWith('127.255.255.'));
    if (refused) return { ok: false, error: 'refused', message: `${zone} refused the query (answer ${refused})`, query };
    return { ok: true, listed: codes.some((c) => c.startsWith('127.')), codes, query };
  }

  /** One query, asked again while the configured time lasts when a try goes unanswered (within-budget.ts). */
  #ask<T>(query: () => Promise<T>): Promise<T> {
    return withinBudget(this.timeoutMs, query);
  }

  async #lookup(name: string, type: DnsType): Promise<DnsAnswer> {
    const resolver = this.#resolver;
    try {
      switch (type) {
        case 'A':
        case 'AAAA': {
          const found = await this.#ask(() => (type === 'A' ? resolver.resolve4(name, { ttl: true }) : resolver.resolve6(name, { ttl: true })));
          // No address (an alias whose target has none): no TTL to go by, kept as "no such record" is.
          if (!found.length) return { ok: true, records: [], ttl: null, nxdomain: false };
          const ttl = Math.min(MAX_CACHE_SECONDS, ...found.map((r) => ttlSeconds(r.ttl)));
          return { ok: true, records: found.map((r) => r.address), ttl, nxdomain: false };
        }
        case 'MX': {
          const found = await this.#ask(() => resolver.resolveMx(name));
          const records = found.map((r) => ({ exchange: r.exchange.replace(/\.$/, '').toLowerCase(), priority: r.priority }))
            .sort((x, y) => x.priority - y.priority);
          return { ok: true, records, ttl: null, nxdomain: false };
        }
        case 'TXT':
          return { ok: true, records: (await this.#ask(() => resolver.resolveTxt(name))).map((chunks) => chunks.join('')), ttl: null, nxdomain: false };
        case 'PTR':
          return { ok: true, records: (await this.#ask(() => resolver.resolvePtr(name))).map((n) => n.replace(/\.$/, '').toLowerCase()), ttl: null, nxdomain: false };
      }
    } catch (err) {
      return failure(err as NodeJS.ErrnoException, name, type);
    }
  }
}

/**
 * Whether the resolver asks for `name` itself. c-ares reads the name as a C string with escapes: a NUL ends it
 * (`evil.test\0.allow.test`, from a header a client wrote, asked for `evil.test`, whose owner answers as it likes)
 * and a backslash escapes (`\.`, `\046`: a dot inside a label, moving the name out of the zone a script appended);
 * and a name with no IDNA form (a lone surrogate, U+FFFD from bytes that are not UTF-8) was asked as the root.
 * Such a name is `badname`, never asked: the answer a script gets is always for the name it gave.
 */
function askable(name: string): boolean {
  if (name.includes('\0') || name.includes('\\')) return false;
  return isAscii(name) || domainToASCII(name) !== '';
}
const isAscii = (s: string): boolean => !/[^\x00-\x7f]/.test(s);

/** A record's TTL: one with the top bit set means 0 (RFC 2181 §8), not 68 years (capped to an hour, it was kept an hour). */
function ttlSeconds(ttl: number): number {
  return ttl > 0x7fffffff || ttl < 0 ? 0 : ttl;
}

/** A kept answer with the TTL it has left. */
function aged(a: DnsAnswer, until: number, now: number): DnsAnswer {
  if (!a.ok || a.ttl === null || until === Infinity) return a;
  return { ...a, ttl: Math.max(0, Math.ceil((until - now) / 1000)) };
}

function failure(err: NodeJS.ErrnoException, name: string, type: DnsType): DnsAnswer {
  switch (err.code) {
    case 'ENOTFOUND': return { ok: true, records: [], ttl: null, nxdomain: true };
    case 'ENODATA': return { ok: true, records: [], ttl: null, nxdomain: false };
    case 'ETIMEOUT': return { ok: false, error: 'timeout', message: `no answer for ${name} ${type}` };
    case 'ESERVFAIL': return { ok: false, error: 'servfail', message: `SERVFAIL for ${name} ${type}` };
    case 'EREFUSED': return { ok: false, error: 'refused', message: `REFUSED for ${name} ${type}` };
    case 'EBADNAME': return { ok: false, error: 'badname', message: `not a domain name: ${name}` };
    default: return { ok: false, error: 'error', message: `${err.code ?? 'error'} for ${name} ${type}: ${err.message}` };
  }
}

function withTimeout(answer: Promise<DnsAnswer>, ms: number, name: string, type: DnsType): Promise<DnsAnswer> {
  let cancel = (): void => {};
  const late = new Promise<DnsAnswer>((resolve) => {
    cancel = deadlineAfterReads(ms, () => resolve({ ok: false, error: 'timeout', message: `no answer for ${name} ${type} within ${ms} ms` }));
  });
  return Promise.race([answer, late]).finally(cancel);
}

/**
 * 192.0.2.1 → 1.2.0.192; 2001:db8::1 → its 32 nibbles, last first. An IPv4-mapped address is its IPv4 client
 * (canonicalIp): asked in ip6.arpa form, no DNSBL lists it (they list the IPv4 address), and no PTR exists.
 */
export function reverseLabels(address: string): string {
  const ip = canonicalIp(address);
  if (isIPv4(ip)) return ip.split('.').reverse().join('.');
  if (isIP(ip) !== 6) throw new TypeError(`not an IP address: ${ip}`);
  const [head, tail = ''] = ip.toLowerCase().split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  if (t.length && t[t.length - 1]!.includes('.')) { // an embedded IPv4 tail: two groups
    const [a, b, c, d] = t.pop()!.split('.').map(Number) as [number, number, number, number];
    t.push(((a << 8) | b).toString(16), ((c << 8) | d).toString(16));
  }
  if (h.length && h[h.length - 1]!.includes('.') && !ip.includes('::')) {
    const [a, b, c, d] = h.pop()!.split('.').map(Number) as [number, number, number, number];
    h.push(((a << 8) | b).toString(16), ((c << 8) | d).toString(16));
  }
  const groups = ip.includes('::') ? [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t] : h;
  return groups.map((g) => g.padStart(4, '0')).join('').split('').reverse().join('.');
}

export function reverseName(ip: string): string {
  return `${reverseLabels(ip)}.${isIPv4(canonicalIp(ip)) ? 'in-addr.arpa' : 'ip6.arpa'}`;
}

/** `address`, `address:port`, `[v6]` or `[v6]:port`, as node:dns's setServers() takes them. */
export function isDnsServer(text: string): boolean {
  const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(text);
  const [host, port] = bracketed ? [bracketed[1]!, bracketed[2]] : isIP(text) ? [text, undefined] : text.split(/:(?=\d{1,5}$)/);
  if (!host || !isIP(host) || (bracketed && isIP(host) !== 6)) return false;
  return port === undefined || (Number(port) >= 1 && Number(port) <= 65535);
}
