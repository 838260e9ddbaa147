/**
 * Counters that limits need summed over every worker process of one server: open connections per
 * listener and client IP, and failed authentications per IP. In one process they are plain maps; in the
 * multi-process model the supervisor holds the truth (CounterHost) and each worker talks to it over its
 * IPC channel (WorkerCounters).
 *
 * Protocol (JSON messages on the worker's IPC channel, `t` names the kind):
 *   supervisor → worker  { t: 'conn', listener, key, open, total, ip, failures, seen } + the socket: the supervisor
 *                        took the slot as it handed the connection over; `open` counts it (`total`: the
 *                        listener's connections over every worker), and the worker refuses when either is
 *                        over the listener's limit. The worker gives the
 *                        slot back ('conn-') when the connection ends, whatever happened on it: its
 *                        listener does, once it took the connection (handedOpen, releaseHanded), since
 *                        STARTTLS removes every listener of the raw socket; before that, the socket's close.
 *                        Slots given back are told with the worker's next message rather than each at once
 *                        (see WorkerCounters.flush). `seen`: the number of the last 'conn-' the supervisor had
 *                        read when it counted `open` and `total`; the worker subtracts the returns it sent after
 *                        that one (still counted there) and those it has not sent yet.
 *   supervisor → worker  { t: 'conn', listener } + the socket: a PROXY protocol listener's connection, no
 *                        slot taken; the worker reads the header, then takes the slot of the client it
 *                        names with 'conn+' (below) and gives it back with 'conn-'.
 *   worker → supervisor  { t: 'conn+', q, key, ip, limit }  take a slot for a connection that did not
 *                                                           come from the supervisor; answered by
 *   worker → supervisor  { t: 'conn+', q, key, ip, take: true }  take it whatever the count, as a hand-over
 *                                                           does (a connection the worker accepted itself:
 *                                                           over the limit it still reads its 421), answered by
 *   supervisor → worker  { t: 'conn+r', q, ok, open, total, failures, seen }  ok: under the limit (the slot is taken);
 *                                                           open: the key's count with this one (take: true);
 *                                                           total: the listener's connections over every
 *                                                           worker (its maxConnections, as with 'conn');
 *                                                           failures: that IP's recent auth failure times
 *   worker → supervisor  { t: 'conn-', keys, s }            connections that got a slot closed (one key per
 *                                                           slot); `s` numbers the worker's 'conn-' messages
 *   worker → supervisor  { t: 'authfail', ip, at }          an authentication failed here
 *   supervisor → children { t: 'authfail', ip, at }         …relayed to every other child (workers, and the queue process: the account page)
 * Slots are counted in the supervisor alone, so the connection limit holds exactly; auth
 * failures reach other workers asynchronously, but every new connection also brings that IP's current
 * list with its slot, so the per-IP refusal at connect sees every failure recorded before it.
 * When a worker dies, the supervisor drops every slot it held. The only worker of a server (`workers: 1`)
 * counts the slots of the connections it accepts itself, and of PROXY protocol clients, alone (no message):
 * no other worker process runs beside it.
 */
import type { FailureMap } from '../auth/failure-limiter.ts';

/** acquire()'s answer: `ok`, under the per-address limit (the slot is taken); `total`, when counted over
 * every worker, the listener's open connections with this one (for its maxConnections). */
export interface Admission { ok: boolean; total?: number }

/** take()'s answer: the address's open connections with this one, and the listener's over every worker. */
export interface Taken { open: number; total?: number }

/** Open-connection counts; `acquire` may answer later (a round trip to the supervisor). */
export interface ConnectionCounts {
  /** `port`: the client's port, which with the key names the connection. */
  acquire(key: string, ip: string, limit: number, port?: number): Admission | Promise<Admission>;
  release(key: string): void;
  /**
   * A slot for a connection this worker accepted itself, taken whatever the count (given back by release()),
   * as the supervisor takes one for a connection it hands over: the caller decides on the count.
   */
  take?(key: string, ip: string): Promise<Taken>;
  /**
   * The count the supervisor sent with a handed-over connection (key and client port), once: the caller then
   * holds its slot and gives it back with releaseHanded() when the connection ends.
   */
  handedOpen?(key: string, port?: number): number | undefined;
  /** A handed-over connection whose slot was claimed with handedOpen() ended. */
  releaseHanded?(key: string): void;
  /** The listener's open connections over every worker, sent with a handed-over connection (read before handedOpen()). */
  handedTotal?(key: string, port?: number): number | undefined;
}

/** One process: a map. */
export class LocalConnectionCounts implements ConnectionCounts {
  readonly #open = new Map<string, number>();
  acquire(key: string, _ip: string, limit: number): Admission {
    const open = (this.#open.get(key) ?? 0) + 1;
    if (open > limit) return { ok: false };
    this.#open.set(key, open);
    return { ok: true };
  }
  release(key: string): void {
    const left = (this.#open.get(key) ?? 1) - 1;
    if (left > 0) this.#open.set(key, left); else this.#open.delete(key);
  }
  /** Open with this key now. */
  count(key: string): number { return this.#open.get(key) ?? 0; }
}

/** The IPC channel of a child process (process.send / process.on('message')), or a test stand-in. */
export interface Channel {
  send(message: object): void;
}

/** Failure times shared with the other workers: local map, records sent to the supervisor. */
export class SharedFailureStore extends Map<string, number[]> implements FailureMap {
  readonly #channel: Channel;
  readonly #windowMs: number;
  constructor(channel: Channel, windowMs: number) {
    super();
    this.#channel = channel;
    this.#windowMs = windowMs;
  }
  recorded(ip: string, at: number): void { this.#channel.send({ t: 'authfail', ip, at }); }
  /** Another worker's failure, relayed by the supervisor. */
  add(ip: string, at: number): void {
    const list = (this.get(ip) ?? []).filter((t) => t > Date.now() - this.#windowMs);
    list.push(at);
    this.set(ip, list);
  }
  /** The supervisor's list for `ip` (every worker's failures, ours included: they were sent before). */
  replace(ip: string, times: number[]): void {
    if (times.length) this.set(ip, times); else this.delete(ip);
  }
}

/** The worker's side: connection slots by round trip, failures through a SharedFailureStore. */
export class WorkerCounters implements ConnectionCounts {
  readonly failures: SharedFailureStore;
  readonly #channel: Channel;
  readonly #waiting = new Map<number, (answer: Admission & { open?: number }) => void>();
  /** Open counts (per address, and the listener's total) of connections handed over with their slot, by "key|client port", until claimed. */
  readonly #handed = new Map<string, { open: number; total: number | undefined }>();
  /** Slots taken by round trip, given back by release(). */
  readonly #requested = new Map<string, number>();
  /** Handed-over slots claimed by a listener (handedOpen), given back by releaseHanded(). */
  readonly #claimed = new Map<string, number>();
  /** Slots given back whose return the supervisor has not been told yet, by key (flush()). */
  readonly #returning = new Map<string, number>();
  /**
   * Returns told ('conn-' number `s`, oldest first) that the supervisor may not have read yet: until a message
   * from it says it has (`seen`), its counts may still hold them.
   */
  readonly #told: Array<{ s: number; keys: Map<string, number> }> = [];
  /** The number of the last 'conn-' sent. */
  #sent = 0;
  #next = 0;
  /**
   * The server's only worker (`workers: 1`): the slots of the connections it accepts itself are counted here
   * alone, without a round trip. No other worker process ever runs beside it (a replacement starts once it
   * has exited), so its counts are the server's.
   */
  readonly #sole: LocalConnectionCounts | null;
  /** Slots taken in #sole, by listener: its maxConnections total. */
  readonly #soleTotals = new Map<string, number>();

  constructor(channel: Channel, authWindowMs: number, opts: { soleWorker?: boolean } = {}) {
    this.#channel = channel;
    this.failures = new SharedFailureStore(channel, authWindowMs);
    this.#sole = opts.soleWorker ? new LocalConnectionCounts() : null;
  }

  /**
   * The supervisor handed over a connection with its slot already taken (`open` counts it); acquire()
   * for that connection (same key and client port) answers from it without a round trip. A listener that
   * takes the connection claims the slot (handedOpen) and gives it back when the connection ends
   * (releaseHanded); a socket that closes before that gives it back here.
   */
  handedOver(key: string, port: number, open: number, ip: string, failures: number[], socket: { once(e: 'close', fn: () => void): unknown }, total?: number, seen?: number): void {
    const id = `${key}|${port}`;
    // The supervisor's counts still hold the slots given back here that it had not read of: those connections are closed.
    this.#handed.set(id, { open: this.uncounted(key, open, seen), total: total === undefined ? undefined : total - this.#returningOf(listenerOf(key)) });
    this.flush(); // written with Node's acknowledgement of this socket: the supervisor reads both at one wake-up
    this.failures.replace(ip, failures);
    socket.once('close', () => {
      if (this.#handed.delete(id)) this.#giveBack(key);
    });
  }

  /**
   * `open`, a count the supervisor sent having read this worker's 'conn-' up to number `seen`, less the slots
   * given back here that it had not read of yet (told after `seen`, or not told): their connections are closed.
   */
  uncounted(key: string, open: number, seen: number | undefined): number {
    this.#read(seen);
    let n = this.#returning.get(key) ?? 0;
    for (const told of this.#told) n += told.keys.get(key) ?? 0;
    return open - n;
  }

  /** The supervisor has read 'conn-' up to number `seen`: those returns are in its counts. */
  #read(seen: number | undefined): void {
    if (seen === undefined) return;
    while (this.#told.length && this.#told[0]!.s <= seen) this.#told.shift();
  }

  handedOpen(key: string, port?: number): number | undefined {
    const handed = this.#handed.get(`${key}|${port}`);
    if (handed === undefined) return undefined;
    this.#handed.delete(`${key}|${port}`);
    this.#claimed.set(key, (this.#claimed.get(key) ?? 0) + 1);
    return handed.open;
  }

  handedTotal(key: string, port?: number): number | undefined {
    return this.#handed.get(`${key}|${port}`)?.total;
  }

  releaseHanded(key: string): void {
    const n = this.#claimed.get(key) ?? 0;
    if (n === 0) return; // never claimed: nothing of ours to give back
    if (n > 1) this.#claimed.set(key, n - 1); else this.#claimed.delete(key);
    this.#giveBack(key);
  }

  acquire(key: string, ip: string, limit: number, port?: number): Admission | Promise<Admission> {
    const handed = this.#handed.get(`${key}|${port}`);
    if (handed !== undefined) {
      this.#handed.delete(`${key}|${port}`);
      return { ok: handed.open <= limit, total: handed.total };
    }
    if (this.#sole) {
      if (!this.#sole.acquire(key, ip, limit).ok) return { ok: false };
      return { ok: true, total: this.#soleTaken(key) };
    }
    const q = ++this.#next;
    this.flush(); // the supervisor decides on its counts: the slots given back here first
    return new Promise((resolve) => {
      this.#waiting.set(q, (answer) => {
        if (answer.ok) this.#requested.set(key, (this.#requested.get(key) ?? 0) + 1);
        // The listener's total as with a hand-over: less the returns the supervisor had not read of (given back since the request).
        resolve(answer.total === undefined ? answer : { ...answer, total: answer.total - this.#returningOf(listenerOf(key)) });
      });
      this.#channel.send({ t: 'conn+', q, key, ip, limit });
    });
  }

  take(key: string, ip: string): Promise<Taken> {
    if (this.#sole) {
      this.#sole.acquire(key, ip, Infinity);
      return Promise.resolve({ open: this.#sole.count(key), total: this.#soleTaken(key) });
    }
    const q = ++this.#next;
    this.flush(); // the supervisor counts on: the slots given back here first
    return new Promise((resolve) => {
      this.#waiting.set(q, (answer) => {
        this.#requested.set(key, (this.#requested.get(key) ?? 0) + 1);
        // As with a hand-over: less the returns the supervisor had not read of (handle() has read its `seen`).
        resolve({
          open: this.uncounted(key, answer.open ?? 1, undefined),
          total: answer.total === undefined ? undefined : answer.total - this.#returningOf(listenerOf(key)),
        });
      });
      this.#channel.send({ t: 'conn+', q, key, ip, take: true });
    });
  }

  /** One more slot of the listener's counted in #sole; returns the listener's total with it. */
  #soleTaken(key: string): number {
    const listener = listenerOf(key);
    const total = (this.#soleTotals.get(listener) ?? 0) + 1;
    this.#soleTotals.set(listener, total);
    return total;
  }

  release(key: string): void {
    if (this.#sole?.count(key)) {
      this.#sole.release(key);
      const listener = listenerOf(key);
      const total = (this.#soleTotals.get(listener) ?? 1) - 1;
      if (total > 0) this.#soleTotals.set(listener, total); else this.#soleTotals.delete(listener);
      return;
    }
    const n = this.#requested.get(key) ?? 0;
    if (n === 0) return; // a handed-over slot: it goes back when its socket closes
    if (n > 1) this.#requested.set(key, n - 1); else this.#requested.delete(key);
    this.#giveBack(key);
  }

  /**
   * Tell the supervisor, in one message, every slot given back since the last time. Called with the
   * worker's other messages (the heartbeat, a slot request) and as a connection is handed over, rather than
   * once per closed connection: a message of its own woke the supervisor once more per connection
   * (docs/benchmarks.md, "Slot returns with the next message"). A slot is told back at most a heartbeat
   * (100 ms) after its connection closed; until then it still counts, never less than what is open, and
   * this worker's own decisions subtract it (handedOver).
   */
  flush(): void {
    if (this.#returning.size === 0) return;
    const keys: string[] = [];
    for (const [key, n] of this.#returning) for (let i = 0; i < n; i++) keys.push(key);
    const s = ++this.#sent;
    this.#told.push({ s, keys: new Map(this.#returning) });
    this.#returning.clear();
    this.#channel.send({ t: 'conn-', keys, s });
  }

  /** A slot handed over with a connection the listener never got (closed on the way; a policy connection's): told with the next message. */
  giveBack(key: string): void { this.#giveBack(key); }

  #giveBack(key: string): void {
    this.#returning.set(key, (this.#returning.get(key) ?? 0) + 1);
  }

  /** Slots of a listener given back that the supervisor had not read of (after uncounted() or #read()). */
  #returningOf(listener: string): number {
    let n = 0;
    for (const [key, k] of this.#returning) if (listenerOf(key) === listener) n += k;
    for (const told of this.#told) for (const [key, k] of told.keys) if (listenerOf(key) === listener) n += k;
    return n;
  }

  /** Feed every message from the supervisor; true when it was one of ours. */
  handle(message: { t?: string; q?: number; ok?: boolean; open?: number; total?: number; ip?: string; at?: number; failures?: number[]; seen?: number }): boolean {
    if (message.t === 'conn+r') {
      if (message.ip !== undefined) this.failures.replace(message.ip, message.failures ?? []);
      const resolve = this.#waiting.get(message.q!);
      this.#waiting.delete(message.q!);
      this.#read(message.seen);
      resolve?.({ ok: message.ok === true, open: message.open, total: message.total });
      return true;
    }
    if (message.t === 'authfail') {
      this.failures.add(message.ip!, message.at!);
      return true;
    }
    return false;
  }
}

/** The supervisor's side: the counts of every worker. */
export class CounterHost {
  readonly #open = new Map<string, number>();
  /** Slots per worker, to give back when it dies. */
  readonly #held = new Map<number, Map<string, number>>();
  readonly #failures = new Map<string, number[]>();
  /** Slots per listener (handed over and by round trip), over every worker. */
  readonly #totals = new Map<string, number>();
  /** Per worker, the number of the last 'conn-' read (sent with each count: the worker subtracts the returns after it). */
  readonly #seen = new Map<number, number>();
  readonly #windowMs: number;

  constructor(authWindowMs: number) { this.#windowMs = authWindowMs; }

  /**
   * One message from worker `worker`; `reply` answers it, `broadcast` tells every other worker.
   * Returns false for messages that are not about counters.
   */
  handle(worker: number, message: { t?: string; q?: number; key?: string; keys?: string[]; s?: number; ip?: string; limit?: number; at?: number; take?: boolean },
    reply: (m: object) => void, broadcast: (m: object) => void): boolean {
    switch (message.t) {
      case 'conn+': {
        const key = message.key!;
        if (message.take) {
          const open = this.take(worker, key);
          reply({ t: 'conn+r', q: message.q, ok: true, open, total: this.total(listenerOf(key)), ip: message.ip, failures: this.failures(message.ip!), seen: this.seen(worker) });
          return true;
        }
        const open = (this.#open.get(key) ?? 0) + 1;
        const ok = open <= message.limit!;
        if (ok) {
          this.#open.set(key, open);
          this.#totals.set(listenerOf(key), (this.#totals.get(listenerOf(key)) ?? 0) + 1);
          const held = this.#held.get(worker) ?? new Map<string, number>();
          held.set(key, (held.get(key) ?? 0) + 1);
          this.#held.set(worker, held);
        }
        reply({ t: 'conn+r', q: message.q, ok, total: this.total(listenerOf(key)), ip: message.ip, failures: this.failures(message.ip!), seen: this.seen(worker) });
        return true;
      }
      case 'conn-': {
        for (const key of message.keys ?? [message.key!]) this.#release(worker, key);
        if (message.s !== undefined) this.#seen.set(worker, message.s);
        return true;
      }
      case 'authfail': {
        const list = this.failures(message.ip!);
        list.push(message.at!);
        this.#failures.set(message.ip!, list);
        if (this.#failures.size > 10_000) for (const ip of [...this.#failures.keys()]) if (!this.failures(ip).length) this.#failures.delete(ip);
        broadcast({ t: 'authfail', ip: message.ip, at: message.at });
        return true;
      }
      default:
        return false;
    }
  }

  /** The supervisor hands a connection to `worker`: its slot is taken now; returns the open count with it. */
  take(worker: number, key: string): number {
    const open = (this.#open.get(key) ?? 0) + 1;
    this.#open.set(key, open);
    const listener = listenerOf(key);
    this.#totals.set(listener, (this.#totals.get(listener) ?? 0) + 1);
    const held = this.#held.get(worker) ?? new Map<string, number>();
    held.set(key, (held.get(key) ?? 0) + 1);
    this.#held.set(worker, held);
    return open;
  }

  /** The number of the last 'conn-' read from `worker` (0: none), sent with the counts handed to it. */
  seen(worker: number): number { return this.#seen.get(worker) ?? 0; }

  /** A worker is gone: its connections with it. */
  workerGone(worker: number): void {
    for (const [key, n] of this.#held.get(worker) ?? []) this.#drop(key, n);
    this.#held.delete(worker);
    this.#seen.delete(worker);
  }

  /** Open connections with this key, over all workers (tests, status). */
  open(key: string): number { return this.#open.get(key) ?? 0; }

  /** Open connections of this listener, over all workers. */
  total(listener: string): number { return this.#totals.get(listener) ?? 0; }

  failures(ip: string): number[] {
    const list = this.#failures.get(ip);
    if (!list) return [];
    const now = Date.now();
    // Times ahead of the clock (it was set back since): counted as now, and kept so (see MemoryAuthFailureStore).
    const recent = list.map((t) => Math.min(t, now)).filter((t) => t > now - this.#windowMs);
    if (recent.length) this.#failures.set(ip, recent); else this.#failures.delete(ip);
    return recent;
  }

  /** One slot of `worker`'s given back. */
  #release(worker: number, key: string): void {
    const held = this.#held.get(worker);
    const mine = held?.get(key) ?? 0;
    if (mine === 0) return; // not this worker's (a stale message): never go below what others hold
    if (mine > 1) held!.set(key, mine - 1); else held!.delete(key);
    this.#drop(key, 1);
  }

  #drop(key: string, n: number): void {
    const left = (this.#open.get(key) ?? n) - n;
    if (left > 0) this.#open.set(key, left); else this.#open.delete(key);
    const listener = listenerOf(key);
    const total = (this.#totals.get(listener) ?? n) - n;
    if (total > 0) this.#totals.set(listener, total); else this.#totals.delete(listener);
  }
}

/** A slot's key is "<listener> <client address>". */
const listenerOf = (key: string): string => key.slice(0, key.indexOf(' '));
