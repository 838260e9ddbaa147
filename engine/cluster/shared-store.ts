/**
 * `store:` memory under `postern serve`: one MemoryCounterStore in the supervisor, shared by every worker
 * process (and the queue process), so rate(), counter() and limits.messagesPerIdentity count for the
 * whole server. The calls a child makes in one turn of its event loop (the rate() calls of a batch of
 * hooks) go as one message on its IPC channel and get one answer: each message costs both processes a
 * write, a wake-up, a read and a JSON parse, which per call cost more than the call itself. The supervisor
 * runs a message's calls in their order, one after the other (each atomic, as alone); each call succeeds or
 * fails by itself. A call that gets no answer within `store.timeoutMs` (or finds the channel closed) fails
 * with StoreUnavailable, which every caller turns into a temporary refusal (fail closed). In a single
 * process the store stays in memory and answers at once (ImmediateCounterStore).
 *
 * Protocol: child → supervisor { t: 'store', q, ops: [[op, key, a, b], …] }   (op: 'rate' | 'get' | 'add')
 *           supervisor → child { t: 'store-r', q, r: [[1, value] | [0, error], …] } (one per op, in order)
 *                              or { t: 'store-r', q, error } (the message as a whole refused)
 */
import type { AuthFailureStore } from '../auth/failure-limiter.ts';
import { StoreUnavailable, type CounterStore, type RateResult } from '../store/counter-store.ts';
import { MemoryCounterStore } from '../store/memory-store.ts';
import { DeadlineQueue, type Waiting } from '../store/deadline-queue.ts';
import type { Channel } from './shared-counters.ts';

type Op = 'rate' | 'get' | 'add';
type StoreOp = [op: Op, key: string, a: number, b: number];
interface StoreRequest { t: 'store'; q: number; ops: StoreOp[] }
type OpResult = [ok: 1, value: unknown] | [ok: 0, error: string];
interface StoreReply { t: 'store-r'; q: number; r?: OpResult[]; error?: string }

/** Calls per message at most: the supervisor runs a message's calls in one go, between its other work. */
export const MAX_STORE_OPS_PER_MESSAGE = 100;

/** A child's store: every call goes to the supervisor, the calls of one turn in one message. */
export class ForwardingCounterStore implements CounterStore {
  readonly kind = 'memory';
  readonly #channel: Channel & { connected?: boolean };
  readonly #timeoutMs: number;
  readonly #authFailures: AuthFailureStore;
  /** Messages sent and not answered, by their number. */
  readonly #waiting = new Map<number, StoreCalls>();
  /** One timer for every message in flight (they share one time limit): see deadline-queue.ts. */
  readonly #deadlines = new DeadlineQueue();
  /** Calls of this turn not sent yet: they go as one message at its end (a microtask). */
  #calls: StoreCalls | null = null;
  #next = 0;
  #closed = false;

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

  /** Feed every message from the supervisor; true when it was an answer to store calls. */
  handle(message: { t?: string }): boolean {
    if (message.t !== 'store-r') return false;
    const { q, r, error } = message as StoreReply;
    const calls = this.#waiting.get(q);
    if (!calls) return true; // answered after its time limit: already failed
    this.#waiting.delete(q);
    this.#deadlines.settle(calls);
    if (error !== undefined) calls.fail(new StoreUnavailable(`store: ${error}`));
    else calls.answered(r);
    return true;
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#deadlines.expireAll();
    return Promise.resolve();
  }

  #call(op: Op, key: string, a: number, b: number): Promise<unknown> {
    if (this.#channel.connected === false) return Promise.reject(new StoreUnavailable('store: the supervisor is gone'));
    let calls = this.#calls;
    if (calls === null || calls.ops.length === MAX_STORE_OPS_PER_MESSAGE) {
      const batch = calls = this.#calls = new StoreCalls(performance.now() + this.#timeoutMs, this.#expired);
      queueMicrotask(() => this.#send(batch));
    }
    return calls.add([op, key, a, b]);
  }

  #send(calls: StoreCalls): void {
    if (this.#calls === calls) this.#calls = null;
    if (this.#channel.connected === false) {
      calls.fail(new StoreUnavailable('store: the supervisor is gone'));
      return;
    }
    const q = calls.q = ++this.#next;
    this.#waiting.set(q, calls);
    this.#deadlines.add(calls);
    try {
      this.#channel.send({ t: 'store', q, ops: calls.ops } satisfies StoreRequest);
    } catch (err) {
      this.#waiting.delete(q);
      this.#deadlines.settle(calls);
      calls.fail(new StoreUnavailable('store: cannot reach the supervisor', { cause: err }));
    }
  }

  /** A message's deadline passed without an answer (or the store closed): its calls fail closed. */
  readonly #expired = (calls: StoreCalls): void => {
    this.#waiting.delete(calls.q);
    calls.fail(new StoreUnavailable(this.#closed ? 'store: closed' : `store: no answer from the supervisor within ${this.#timeoutMs} ms`));
  };
}

/** The calls of one message: what they ask, and how to settle each. */
class StoreCalls implements Waiting {
  readonly ops: StoreOp[] = [];
  readonly deadline: number;
  settled = false;
  /** The message's number, once sent. */
  q = 0;
  readonly #onExpire: (calls: StoreCalls) => void;
  readonly #resolve: Array<(value: unknown) => void> = [];
  readonly #reject: Array<(error: unknown) => void> = [];

  constructor(deadline: number, onExpire: (calls: StoreCalls) => void) {
    this.deadline = deadline;
    this.#onExpire = onExpire;
  }

  add(op: StoreOp): Promise<unknown> {
    this.ops.push(op);
    return new Promise((resolve, reject) => {
      this.#resolve.push(resolve);
      this.#reject.push(reject);
    });
  }

  expire(): void {
    this.settled = true;
    this.#onExpire(this);
  }

  /** One result per call, in order; anything else fails them all (closed). */
  answered(r: unknown): void {
    if (!Array.isArray(r) || r.length !== this.ops.length) {
      this.fail(new StoreUnavailable('store: unexpected answer from the supervisor'));
      return;
    }
    for (let i = 0; i < r.length; i++) {
      const [ok, value] = (Array.isArray(r[i]) ? r[i] : [0, 'unexpected answer']) as OpResult;
      if (ok === 1) this.#resolve[i]!(value);
      else this.#reject[i]!(new StoreUnavailable(`store: ${String(value)}`));
    }
  }

  fail(error: unknown): void {
    for (const reject of this.#reject) reject(error);
  }
}

/** The supervisor's side: the one memory store, answering each child's calls at once, in their order. */
export class StoreHost {
  readonly #store: MemoryCounterStore;

  constructor(store: MemoryCounterStore = new MemoryCounterStore()) {
    this.#store = store;
  }

  /** Feed every message from a child; true when it was a store message (answered through `send`). */
  handle(message: { t?: string }, send: (m: object) => void): boolean {
    if (message.t !== 'store') return false;
    const { q, ops } = message as StoreRequest;
    if (!Array.isArray(ops) || ops.length > MAX_STORE_OPS_PER_MESSAGE) {
      send({ t: 'store-r', q, error: 'invalid message' } satisfies StoreReply);
      return true;
    }
    const r: OpResult[] = new Array(ops.length);
    for (let i = 0; i < ops.length; i++) r[i] = this.#run(ops[i]);
    send({ t: 'store-r', q, r } satisfies StoreReply);
    return true;
  }

  /** One call: its value, or why it was refused (that call alone fails). */
  #run(call: unknown): OpResult {
    try {
      if (!Array.isArray(call)) throw new Error('invalid call');
      const [op, key, a, b] = call as StoreOp;
      if (typeof key !== 'string' || !Number.isFinite(a) || !Number.isFinite(b)) throw new Error('invalid call');
      const now = this.#store.immediate;
      const value = op === 'rate' ? now.rateNow(key, a, b) : op === 'get' ? now.getNow(key) : op === 'add' ? now.addNow(key, a, b) : undefined;
      if (value === undefined) throw new Error(`unknown operation ${String(op)}`);
      return [1, value];
    } catch (err) {
      return [0, (err as Error).message];
    }
  }
}
