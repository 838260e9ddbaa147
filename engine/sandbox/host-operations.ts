/**
 * Asynchronous host operations a script can await: one kind, one host function from the call's arguments
 * (copied out of the isolate) to a JSON answer. A function that can answer at once returns the text (the
 * script's promise then settles within its turn, on the fast path); any other returns a promise, and the
 * isolate slot delivers its answer later (isolate-slot.ts). A rejection, or a throw, fails the script's
 * promise (fail closed: 451 unless the script catches it).
 *
 * Adding an async helper (dns.resolve, dnsbl, …) is one function here and one line in isolate-runtime.ts
 * that calls `hostAsync('<kind>', a, b, c)` — the protocol, batching, time limits and log attribution
 * come with it.
 */
import { isIP } from 'node:net';
import { STORE_KEYS, type CounterStore } from '../store/counter-store.ts';
import { DNS_TYPES, type DnsType, type ScriptDns } from '../dns/script-dns.ts';
import type { HostBridge } from './host-callbacks.ts';

export type HostOperation = (args: readonly unknown[], host: HostBridge) => string | Promise<string>;

/** The counter-store operations (rate(), counter().get/add()): key and two numbers, checked again here. */
function storeArguments(op: 'rate' | 'get' | 'add', args: readonly unknown[]): { key: string; x: number; y: number } {
  const [key, a, b] = args;
  const k = String(key);
  const x = Number(a);
  const y = Number(b);
  if (!k || k.length > 1024 || !Number.isSafeInteger(x) || !Number.isSafeInteger(y)) throw new TypeError('store: invalid arguments');
  if (op === 'rate' && x >= 1 && y >= 1) return { key: STORE_KEYS.scriptRate(k), x, y };
  if (op === 'get') return { key: STORE_KEYS.scriptCounter(k), x, y };
  if (op === 'add' && y >= 1) return { key: STORE_KEYS.scriptCounter(k), x, y };
  throw new TypeError(`store: invalid operation ${op}`);
}

/** dns.resolve() and dnsbl(): a name or zone, a type or address, and the call's time limit, checked again here. */
function dnsArguments(args: readonly unknown[]): { first: string; second: string; ms: number } {
  const [a, b, timeoutMs] = args;
  const first = String(a);
  const ms = Number(timeoutMs);
  if (!first || first.length > 1024 || !Number.isSafeInteger(ms) || ms < 1) throw new TypeError('dns: invalid arguments');
  return { first, second: String(b), ms };
}

const dnsOf = (fn: string, host: HostBridge): ScriptDns => {
  if (!host.dns) throw new Error(`${fn}: no DNS here`);
  return host.dns;
};

const storeOf = (op: string, host: HostBridge): CounterStore => {
  if (!host.store) throw new Error(`${op}(): no counter store here`);
  return host.store;
};

/** An answer as the isolate takes it (one function for every call: no closure per operation). */
const json = (answer: unknown): string => JSON.stringify(answer);

export const HOST_OPERATIONS: Readonly<Record<string, HostOperation>> = Object.freeze({
  rate(args, host) {
    const store = storeOf('rate', host);
    const { key, x, y } = storeArguments('rate', args);
    if (store.immediate) return JSON.stringify(store.immediate.rateNow(key, x, y));
    return store.rate(key, x, y).then(json);
  },
  get(args, host) {
    const store = storeOf('get', host);
    const { key } = storeArguments('get', args);
    if (store.immediate) return JSON.stringify(store.immediate.getNow(key));
    return store.get(key).then(json);
  },
  add(args, host) {
    const store = storeOf('add', host);
    const { key, x, y } = storeArguments('add', args);
    if (store.immediate) return JSON.stringify(store.immediate.addNow(key, x, y));
    return store.add(key, x, y).then(json);
  },
  // A DNS failure is an answer (`ok: false`), never a rejection; arguments the runtime should have refused reject.
  'dns.resolve'(args, host) {
    const dns = dnsOf('dns.resolve()', host);
    const { first, second, ms } = dnsArguments(args);
    if (!DNS_TYPES.includes(second as DnsType)) throw new TypeError(`dns.resolve(): invalid type ${second}`);
    return dns.resolve(first, second as DnsType, ms).then(json);
  },
  dnsbl(args, host) {
    const dns = dnsOf('dnsbl()', host);
    const { first, second, ms } = dnsArguments(args);
    if (!isIP(second)) throw new TypeError(`dnsbl(): ${second} is not an IP address`);
    return dns.dnsbl(first, second, ms).then(json);
  },
});

/** Start operation `kind`: its answer now (a string), or a promise of it. Throws for an unknown kind. */
export function startHostOperation(kind: unknown, args: unknown, host: HostBridge): string | Promise<string> {
  const operation = typeof kind === 'string' && Object.hasOwn(HOST_OPERATIONS, kind) ? HOST_OPERATIONS[kind]! : undefined;
  if (!operation) throw new TypeError(`unknown host operation ${String(kind)}`);
  return operation(Array.isArray(args) ? args : [], host);
}
