/**
 * The host side of the helper globals: hashing with node:crypto, table lookups, logging and counters through the
 * HostBridge, each call tagged with the connection and script the isolate is currently running.
 */
import { createHash, createHmac } from 'node:crypto';
import ivm from 'isolated-vm';
import { isIP } from 'node:net';
import { STORE_KEYS, type CounterStore } from '../store/counter-store.ts';
import { readMessageText } from './message-texts.ts';
import { DNS_TYPES, type DnsType, type ScriptDns } from '../dns/script-dns.ts';

export type LogLevel = 'info' | 'warn' | 'error' | 'fatal';

/** What the sandbox needs from the server. lookup and log are called synchronously from scripts. */
export interface HostBridge {
  /** Must answer alike for the same arguments while the sandbox lives: isolates remember the answers. */
  lookup(table: string, key: string): string | null;
  log(connectionId: string | null, file: string, level: LogLevel, message: string): void;
  /** Counters for rate() and counter(); without one (postern check) those calls throw. */
  store?: CounterStore;
  /** DNS for dns.resolve() and dnsbl(); without one those calls throw. */
  dns?: ScriptDns;
}

/** Who is running in an isolate right now: a call (with its connection) or a script's top level. */
export interface CurrentRun {
  connectionId: string | null;
  file: string;
  /** Log lines held back until the call is known to count (a fast-path attempt may be run again). */
  held?: string[];
}

const HMAC_ALGORITHMS = new Set(['sha1', 'sha256', 'sha512', 'md5']);
const MAX_LOG = 16384; // the runtime already truncates; this guards the host if it is bypassed

/** As the runtime's limit (isolate-runtime.ts): hashing holds the event loop. Checked here too in case it is bypassed. */
const MAX_HASH_INPUT = 1 << 20;
const bounded = (data: unknown): string => {
  const text = String(data);
  if (text.length > MAX_HASH_INPUT) throw new RangeError(`hash input longer than ${MAX_HASH_INPUT} characters`);
  return text;
};
const digest = (algorithm: string) => (data: unknown): string => createHash(algorithm).update(bounded(data)).digest('hex');

/**
 * The Callbacks passed to installRuntime, in its parameter order. Arguments arrive as copies; only
 * strings and null go back. A failing lookup throws into the script (and so fails the call closed);
 * a failing logger does not.
 */
export function hostCallbacks(host: HostBridge, current: () => CurrentRun | null): Array<ivm.Callback | ivm.Reference> {
  const hmac = (algorithm: unknown, key: unknown, data: unknown): string => {
    const alg = String(algorithm);
    if (!HMAC_ALGORITHMS.has(alg)) throw new TypeError(`hmac(): unsupported algorithm ${alg}`);
    return createHmac(alg, bounded(key)).update(bounded(data)).digest('hex');
  };
  const lookup = (table: unknown, key: unknown): string | null => {
    const value = host.lookup(String(table), String(key));
    return typeof value === 'string' ? value : null;
  };
  const log = (message: unknown): void => {
    const run = current();
    if (run?.held) {
      run.held.push(String(message).slice(0, MAX_LOG));
      return;
    }
    try {
      host.log(run?.connectionId ?? null, run?.file ?? '(sandbox)', 'info', String(message).slice(0, MAX_LOG));
    } catch {
      // logging is best effort: it must not decide a policy call
    }
  };
  const fns: Array<(...args: never[]) => unknown> = [digest('sha1'), digest('sha256'), digest('md5'), hmac, lookup, log];
  return [
    ...fns.map((fn) => new ivm.Callback(fn)), new ivm.Reference(storeOperation(host.store)), new ivm.Callback(storeOperationNow(host.store)),
    new ivm.Callback(readMessageText), new ivm.Reference(dnsOperation(host.dns)),
  ];
}

/** A store operation's checked arguments, under the scripts' own key namespace. */
function storeArguments(op: unknown, key: unknown, a: unknown, b: unknown): { op: 'rate' | 'get' | 'add'; key: string; x: number; y: number } {
  // The runtime checked these; checked again in case it is bypassed.
  const k = String(key);
  const x = Number(a);
  const y = Number(b);
  if (!k || k.length > 1024 || !Number.isSafeInteger(x) || !Number.isSafeInteger(y)) throw new TypeError('store: invalid arguments');
  if (op === 'rate' && x >= 1 && y >= 1) return { op, key: STORE_KEYS.scriptRate(k), x, y };
  if (op === 'get') return { op, key: STORE_KEYS.scriptCounter(k), x, y };
  if (op === 'add' && y >= 1) return { op, key: STORE_KEYS.scriptCounter(k), x, y };
  throw new TypeError(`store: invalid operation ${String(op)}`);
}

/**
 * The same operations answered at once, as JSON, by a store that can (memory); null when it cannot, and the
 * script then takes the asynchronous way. An `async` hook using such a store stays on the fast path.
 */
export function storeOperationNow(store: CounterStore | undefined) {
  return (op: unknown, key: unknown, a: unknown, b: unknown): string | null => {
    const now = store?.immediate;
    if (!now) return null;
    const c = storeArguments(op, key, a, b);
    if (c.op === 'rate') return JSON.stringify(now.rateNow(c.key, c.x, c.y));
    return JSON.stringify(c.op === 'get' ? now.getNow(c.key) : now.addNow(c.key, c.x, c.y));
  };
}

/**
 * rate(), counter().get() and counter().add() of scripts, under the scripts' own key namespace. The answer
 * crosses as JSON text; a store failure rejects the script's promise (so an uncaught one fails the call closed).
 */
export function storeOperation(store: CounterStore | undefined) {
  const operation = storeAnswer(store);
  return (op: unknown, key: unknown, a: unknown, b: unknown): Promise<string> => {
    const answer = operation(op, key, a, b);
    // isolated-vm takes the promise up a tick later: one that is already rejected by then would count
    // as an unhandled rejection in this process. The script still gets the rejection.
    answer.catch(() => {});
    return answer;
  };
}

function storeAnswer(store: CounterStore | undefined) {
  return async (op: unknown, key: unknown, a: unknown, b: unknown): Promise<string> => {
    if (!store) throw new Error(`${String(op)}(): no counter store here`);
    const c = storeArguments(op, key, a, b);
    if (c.op === 'rate') return JSON.stringify(await store.rate(c.key, c.x, c.y));
    return JSON.stringify(c.op === 'get' ? await store.get(c.key) : await store.add(c.key, c.x, c.y));
  };
}

/**
 * dns.resolve() and dnsbl() of scripts: the answer as JSON text. A DNS failure is an answer (`ok: false`),
 * never a rejection; arguments the runtime should have refused reject.
 */
export function dnsOperation(dns: ScriptDns | undefined) {
  const operation = dnsAnswer(dns);
  return (op: unknown, a: unknown, b: unknown, timeoutMs: unknown): Promise<string> => {
    const answer = operation(op, a, b, timeoutMs);
    answer.catch(() => {}); // as storeOperation: the script still gets the rejection
    return answer;
  };
}

function dnsAnswer(dns: ScriptDns | undefined) {
  return async (op: unknown, a: unknown, b: unknown, timeoutMs: unknown): Promise<string> => {
    if (!dns) throw new Error(`${op === 'dnsbl' ? 'dnsbl()' : 'dns.resolve()'}: no DNS here`);
    const first = String(a);
    const second = String(b);
    const ms = Number(timeoutMs);
    if (!first || first.length > 1024 || !Number.isSafeInteger(ms) || ms < 1) throw new TypeError('dns: invalid arguments');
    if (op === 'resolve' && DNS_TYPES.includes(second as DnsType)) return JSON.stringify(await dns.resolve(first, second as DnsType, ms));
    if (op === 'dnsbl' && isIP(second)) return JSON.stringify(await dns.dnsbl(first, second, ms));
    throw new TypeError(`dns: invalid operation ${String(op)}`);
  };
}
