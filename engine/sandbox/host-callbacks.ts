/**
 * The host side of the helper globals: hashing with node:crypto, table lookups, logging, and the start of
 * asynchronous operations (host-operations.ts) through the HostBridge, each call tagged with the connection
 * and script the isolate is currently running.
 */
import { createHash, createHmac } from 'node:crypto';
import ivm from 'isolated-vm';
import type { CounterStore } from '../store/counter-store.ts';
import { startHostOperation } from './host-operations.ts';
import { readMessageText } from './message-texts.ts';
import type { ScriptDns } from '../dns/script-dns.ts';

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
  /** With `held`: the call id the runtime named for each line (a continuation's), when it is wanted. */
  heldFor?: number[];
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
/** As the runtime's limit: the host folds, hashes and parses a lookup key on the event-loop thread. */
const MAX_LOOKUP_INPUT = 65536;
const digest = (algorithm: string) => (data: unknown): string => createHash(algorithm).update(bounded(data)).digest('hex');

/** What the slot tells the host callbacks: where a pending operation's answer goes, and who a call id is. */
export interface SlotHooks {
  /** Throws when call `callId` may not start another operation now (too many in flight). */
  admit(callId: number): void;
  /**
   * Start operation `kind` for whoever `callId` names, at most once per call (operation-journal.ts):
   * `live` starts it; the slot calls it, or answers with what an earlier attempt of the call was answered;
   * or null: refused to code that must not go on (its promise never settles; the slot forgets it).
   */
  operate(opId: number, callId: number, kind: string, args: readonly unknown[], live: () => string | Promise<string>): string | Promise<string> | null;
  /** An operation the host could not answer at once was started for call `callId`; `answer` settles later. */
  started(opId: number, callId: number, answer: Promise<string>): void;
  /** The connection and script of a call the slot knows by id (a continuation's log lines name it). */
  whose(callId: number): { connectionId: string | null; file: string } | undefined;
}

/**
 * The Callbacks passed to installRuntime, in its parameter order. Arguments arrive as copies; only
 * strings and null go back. A failing lookup throws into the script (and so fails the call closed);
 * a failing logger does not.
 */
export function hostCallbacks(host: HostBridge, current: () => CurrentRun | null, slot: SlotHooks): ivm.Callback[] {
  const hmac = (algorithm: unknown, key: unknown, data: unknown): string => {
    const alg = String(algorithm);
    if (!HMAC_ALGORITHMS.has(alg)) throw new TypeError(`hmac(): unsupported algorithm ${alg}`);
    return createHmac(alg, bounded(key)).update(bounded(data)).digest('hex');
  };
  const lookup = (table: unknown, key: unknown): string | null => {
    const t = String(table);
    const k = String(key);
    if (t.length + k.length > MAX_LOOKUP_INPUT) throw new RangeError(`lookup(): table and key are longer than ${MAX_LOOKUP_INPUT} characters`);
    const value = host.lookup(t, k);
    return typeof value === 'string' ? value : null;
  };
  const log = (message: unknown, callId: unknown): void => {
    const run = current();
    if (run?.held) {
      run.held.push(String(message).slice(0, MAX_LOG));
      run.heldFor?.push(typeof callId === 'number' ? callId : -1);
      return;
    }
    // A continuation delivered on an isolate thread names its call; a call run there has `current`.
    const who = typeof callId === 'number' && callId >= 0 ? slot.whose(callId) : undefined;
    try {
      host.log(who?.connectionId ?? run?.connectionId ?? null, who?.file ?? run?.file ?? '(sandbox)', 'info', String(message).slice(0, MAX_LOG));
    } catch {
      // logging is best effort: it must not decide a policy call
    }
  };
  const start = (opId: unknown, callId: unknown, kind: unknown, a: unknown, b: unknown, c: unknown): string | null => {
    slot.admit(Number(callId));
    const list = [a, b, c];
    const answer = slot.operate(Number(opId), Number(callId), String(kind), list, () => startHostOperation(kind, list, host));
    if (answer === null || typeof answer === 'string') return answer;
    // Settled later, through the slot, which handles a rejection too (never an unhandled one in this process).
    slot.started(Number(opId), Number(callId), answer);
    return null;
  };
  const fns: Array<(...args: never[]) => unknown> = [digest('sha1'), digest('sha256'), digest('md5'), hmac, lookup, log, start, readMessageText];
  return fns.map((fn) => new ivm.Callback(fn));
}
