/**
 * `store:` memory under `postern serve`: one MemoryCounterStore in the supervisor, shared by every worker
 * process (and the queue process), so rate(), counter() and limits.messagesPerIdentity count for the
 * whole server. Each call is one message on the child's IPC channel and one answer; a call that gets no
 * answer within `store.timeoutMs` (or finds the channel closed) fails with StoreUnavailable, which every
 * caller turns into a temporary refusal (fail closed). In a single process the store stays in memory and
 * answers at once (ImmediateCounterStore).
 *
 * Protocol: child → supervisor { t: 'store', q, op: 'rate' | 'get' | 'add', key, a, b }
 *           supervisor → child { t: 'store-r', q, value } or { t: 'store-r', q, error }
 */
import type { AuthFailureStore } from '../auth/failure-limiter.ts';
import { StoreUnavailable, type CounterStore, type RateResult } from '../store/counter-store.ts';
import { MemoryCounterStore } from '../store/memory-store.ts';
import type { Channel } from './shared-counters.ts';

type Op = 'rate' | 'get' | 'add';
interface StoreRequest { t: 'store'; q: number; op: Op; key: string; a: number; b: number }
interface StoreReply { t: 'store-r'; q: number; value?: unknown; error?: string }

/** A child's store: every call goes to the supervisor. */
export class ForwardingCounterStore implements CounterStore {
  readonly kind = 'memory';
  readonly #channel: Channel & { connected?: boolean };
  readonly #timeoutMs: number;
  readonly #authFailures: AuthFailureStore;
  readonly #waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void; timer: NodeJS.Timeout }>();
  #next = 0;

  /** `authFailures`: the per-IP failure store this process already shares (shared-counters.ts). */
  constructor(channel: Channel & { connected?: boolean }, timeoutMs: number, authFailures: AuthFailureStore) {
    this.#channel = channel;
    this.#timeoutMs = timeoutMs;
    this.#authFailures = authFailures;
  }

  rate(key: string, limit: number, windowSeconds: number): Promise<RateResult> {
    return this.#call('rate', key, limit, windowSeconds) as Promise<RateResult>;
  }

  get(key: string): Promise<number> {
    return this.#call('get', key, 0, 0) as Promise<number>;
  }

  add(key: string, n: number, ttlSeconds: number): Promise<number> {
    return this.#call('add', key, n, ttlSeconds) as Promise<number>;
  }

  authFailures(): AuthFailureStore {
    return this.#authFailures;
  }

  /** Feed every message from the supervisor; true when it was an answer to a store call. */
  handle(message: { t?: string }): boolean {
    if (message.t !== 'store-r') return false;
    const { q, value, error } = message as StoreReply;
    const waiting = this.#waiting.get(q);
    if (!waiting) return true; // answered after its time limit: already failed
    this.#waiting.delete(q);
    clearTimeout(waiting.timer);
    if (error !== undefined) waiting.reject(new StoreUnavailable(`store: ${error}`));
    else waiting.resolve(value);
    return true;
  }

  close(): Promise<void> {
    for (const [q, w] of this.#waiting) {
      clearTimeout(w.timer);
      w.reject(new StoreUnavailable('store: closed'));
      this.#waiting.delete(q);
    }
    return Promise.resolve();
  }

  #call(op: Op, key: string, a: number, b: number): Promise<unknown> {
    if (this.#channel.connected === false) return Promise.reject(new StoreUnavailable('store: the supervisor is gone'));
    const q = ++this.#next;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(q);
        reject(new StoreUnavailable(`store: no answer from the supervisor within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#waiting.set(q, { resolve, reject, timer });
      try {
        this.#channel.send({ t: 'store', q, op, key, a, b } satisfies StoreRequest);
      } catch (err) {
        clearTimeout(timer);
        this.#waiting.delete(q);
        reject(new StoreUnavailable('store: cannot reach the supervisor', { cause: err }));
      }
    });
  }
}

/** The supervisor's side: the one memory store, answering each child's calls at once. */
export class StoreHost {
  readonly #store: MemoryCounterStore;

  constructor(store: MemoryCounterStore = new MemoryCounterStore()) {
    this.#store = store;
  }

  /** Feed every message from a child; true when it was a store call (answered through `send`). */
  handle(message: { t?: string }, send: (m: object) => void): boolean {
    if (message.t !== 'store') return false;
    const { q, op, key, a, b } = message as StoreRequest;
    let reply: StoreReply;
    try {
      if (typeof key !== 'string' || !Number.isFinite(a) || !Number.isFinite(b)) throw new Error('invalid call');
      const now = this.#store.immediate;
      const value = op === 'rate' ? now.rateNow(key, a, b) : op === 'get' ? now.getNow(key) : op === 'add' ? now.addNow(key, a, b) : undefined;
      if (value === undefined) throw new Error(`unknown operation ${String(op)}`);
      reply = { t: 'store-r', q, value };
    } catch (err) {
      reply = { t: 'store-r', q, error: (err as Error).message };
    }
    send(reply);
    return true;
  }
}
