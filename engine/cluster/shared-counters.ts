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
 *   supervisor → worker  { t: 'failures', list }            as it becomes ready: every IP's recent failures (relays reach it from then on)
 * The counting lease, while one worker alone accepts (`workers: 1`, or `workers: N` at light load):
 *   supervisor → worker  { t: 'lease', counts, seen }       count alone from now on: `counts`, every slot held now by
 *                                                           key (`seen` as with 'conn'); requests not yet answered
 *                                                           were sent before this and count as taken (SoleCounter)
 *   supervisor → holder  { t: 'lease-', keys }              other workers' slots given back (their 'conn-')
 *   supervisor → holder  { t: 'lease-end' }                 another worker is to accept, or asked for a slot
 *   holder → supervisor  { t: 'lease-table', keys }         the slots it took alone and that are still open (one key
 *                                                           per slot), in the same turn as it goes back to 'conn+'
 * Slots are counted in one place at a time, so the connection limit holds exactly: in the supervisor, or
 * in the lease's holder. The supervisor grants the lease only when one worker accepts and every other has
 * said it stopped; a 'conn+' of another worker is parked and the lease ended first, and no other worker
 * is told to accept until the holder's table is merged. A holder that does not answer (hung, stopped) is
 * waited for until it is dead: its connections, which only it counted, close with it (its watchdog kills
 * a stuck event loop after 1 s, the supervisor a silent process after 3 s). Why a lease: the round trip
 * per connection cost the supervisor and the worker about 50–70 µs (docs/benchmarks.md, "The counting lease").
 * Auth failures reach other workers asynchronously; a connection by round trip brings that IP's current
 * list with its slot, so the per-IP refusal at connect sees every failure the supervisor read before; the
 * holder decides on the failures relayed to it (and the list it got when ready), as `workers: 1` always did.
 * When a worker dies, the supervisor drops every slot it held.
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
  /**
   * Slot requests sent, by number: `take` (whatever the count) or under `limit`; `inLease`: pending when a
   * lease was granted, so counted in its counts as taken.
   */
  readonly #waiting = new Map<number, Waiting>();
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
   * The counting lease (see SoleCounter below): while this worker is the only one taking slots, it counts
   * them here, without a round trip; null while the supervisor counts.
   */
  #lease: SoleCounter | null = null;

  constructor(channel: Channel, authWindowMs: number) {
    this.#channel = channel;
    this.failures = new SharedFailureStore(channel, authWindowMs);
  }

  /** This worker holds the counting lease (tests, status). */
  get leased(): boolean { return this.#lease !== null; }

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
    if (this.#lease) return this.#lease.acquire(key, limit);
    const q = ++this.#next;
    this.flush(); // the supervisor decides on its counts: the slots given back here first
    return new Promise((resolve) => {
      this.#waiting.set(q, { key, take: false, limit, inLease: false, resolve: resolve as Waiting['resolve'] });
      this.#channel.send({ t: 'conn+', q, key, ip, limit });
    });
  }

  take(key: string, ip: string): Promise<Taken> {
    if (this.#lease) return Promise.resolve(this.#lease.take(key));
    const q = ++this.#next;
    this.flush(); // the supervisor counts on: the slots given back here first
    return new Promise((resolve) => {
      this.#waiting.set(q, { key, take: true, limit: Infinity, inLease: false, resolve: resolve as Waiting['resolve'] });
      this.#channel.send({ t: 'conn+', q, key, ip, take: true });
    });
  }

  /** The supervisor's answer to a slot request (`open`, `total` and `seen` as it counted them). */
  #settle(w: Waiting, ok: boolean, open: number | undefined, total: number | undefined): void {
    const listener = listenerOf(w.key);
    if (w.take || ok) this.#requested.set(w.key, (this.#requested.get(w.key) ?? 0) + 1);
    // As with a hand-over: less the returns the supervisor had not read of (handle() has read its `seen`).
    const counted = total === undefined ? undefined : total - this.#returningOf(listener);
    if (w.take) w.resolve({ open: this.uncounted(w.key, open ?? 1, undefined), total: counted });
    else w.resolve(counted === undefined ? { ok } : { ok, total: counted });
  }

  release(key: string): void {
    if (this.#lease?.releaseLocal(key)) return; // taken under the lease: the supervisor never knew of it
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
    this.#lease?.closed(key); // the lease's counts held it: one fewer at once (the supervisor's when it reads this)
  }

  /** Slots of a listener given back that the supervisor had not read of (after uncounted() or #read()). */
  #returningOf(listener: string): number {
    let n = 0;
    for (const [key, k] of this.#returning) if (listenerOf(key) === listener) n += k;
    for (const told of this.#told) for (const [key, k] of told.keys) if (listenerOf(key) === listener) n += k;
    return n;
  }

  /** Feed every message from the supervisor; true when it was one of ours. */
  handle(message: { t?: string; q?: number; ok?: boolean; open?: number; total?: number; ip?: string; at?: number; failures?: number[]; seen?: number; counts?: Array<[string, number]>; keys?: string[]; list?: Array<[string, number[]]> }): boolean {
    switch (message.t) {
      case 'conn+r': {
        if (message.ip !== undefined) this.failures.replace(message.ip, message.failures ?? []);
        const waiting = this.#waiting.get(message.q!);
        this.#waiting.delete(message.q!);
        this.#read(message.seen);
        if (!waiting) return true;
        if (waiting.inLease && this.#lease) this.#settleInLease(waiting, message.ok === true);
        else this.#settle(waiting, message.ok === true, message.open, message.total);
        return true;
      }
      case 'authfail':
        this.failures.add(message.ip!, message.at!);
        return true;
      case 'failures': // the supervisor's list as this process became ready: what was recorded before it ran
        for (const [ip, times] of message.list ?? []) this.failures.replace(ip, times);
        return true;
      case 'lease': {
        // The slots counted so far, less the returns of ours the supervisor had not read; the requests it has
        // not answered yet were sent before it granted (their answers come after this message): counted as taken.
        const lease = new SoleCounter();
        this.#read(message.seen);
        for (const [key, n] of message.counts ?? []) if (key.includes(' ')) lease.counted(key, this.uncounted(key, n, undefined));
        for (const w of this.#waiting.values()) {
          w.inLease = true;
          lease.counted(w.key, 1);
        }
        this.#lease = lease;
        return true;
      }
      case 'lease-end': {
        // Another worker is to accept: the slots taken under the lease go to the supervisor, in the same turn
        // as the counting moves back to it (every later slot by round trip); they are given back as those are.
        const keys = this.#lease?.localKeys() ?? [];
        this.#lease = null;
        for (const key of keys) this.#requested.set(key, (this.#requested.get(key) ?? 0) + 1);
        this.#channel.send({ t: 'lease-table', keys });
        return true;
      }
      case 'lease-': // slots other workers gave back (their connections closed)
        for (const key of message.keys ?? []) this.#lease?.closed(key);
        return true;
      default:
        return false;
    }
  }

  /**
   * The answer to a request sent before the lease was granted, read while it holds: the lease's counts took
   * it as taken and decide (the supervisor's answer did not see the slots taken here since).
   */
  #settleInLease(w: Waiting, ok: boolean): void {
    const lease = this.#lease!;
    if (!ok) { // refused there (a PROXY client's, over its limit): no slot
      lease.closed(w.key);
      return w.resolve({ ok: false });
    }
    this.#requested.set(w.key, (this.#requested.get(w.key) ?? 0) + 1);
    const open = lease.open(w.key);
    const total = lease.total(listenerOf(w.key));
    if (w.take) return w.resolve({ open, total });
    if (open > w.limit) { // over its limit by the slots taken here meanwhile: given back
      this.release(w.key);
      return w.resolve({ ok: false });
    }
    w.resolve({ ok: true, total });
  }
}

/** A slot request waiting for the supervisor's answer (WorkerCounters). */
interface Waiting {
  key: string;
  take: boolean;
  limit: number;
  inLease: boolean;
  resolve(answer: Admission | Taken): void;
}

/**
 * The counting lease of the worker that alone takes slots (shared-counters.ts, top): every slot of the
 * server by key and by listener, as this worker knows them. It starts from the supervisor's counts at the
 * grant (less our returns it had not read) and follows every change: slots taken here (local: the
 * supervisor does not know them until the lease ends), our slots given back, other workers' returns
 * (relayed as 'lease-'). No other worker takes a slot while it holds (the supervisor parks their requests
 * and ends the lease first), so its counts are never below the server's; returns not yet relayed keep them
 * above for a moment, as the supervisor's own counts are.
 */
export class SoleCounter {
  readonly #open = new Map<string, number>();
  readonly #totals = new Map<string, number>();
  readonly #local = new Map<string, number>();

  /** `n` more slots of `key` (the grant's counts, a request pending at the grant). */
  counted(key: string, n: number): void {
    if (n <= 0) return;
    this.#open.set(key, (this.#open.get(key) ?? 0) + n);
    const listener = listenerOf(key);
    this.#totals.set(listener, (this.#totals.get(listener) ?? 0) + n);
  }

  /** One slot of `key` closed (ours given back, or another worker's), never below zero. */
  closed(key: string): void {
    const n = this.#open.get(key) ?? 0;
    if (n === 0) return;
    if (n > 1) this.#open.set(key, n - 1); else this.#open.delete(key);
    const listener = listenerOf(key);
    const total = (this.#totals.get(listener) ?? 1) - 1;
    if (total > 0) this.#totals.set(listener, total); else this.#totals.delete(listener);
  }

  open(key: string): number { return this.#open.get(key) ?? 0; }
  total(listener: string): number { return this.#totals.get(listener) ?? 0; }

  /** A slot under `limit` (a PROXY client's), taken here; `total`: the listener's with it. */
  acquire(key: string, limit: number): Admission {
    if (this.open(key) + 1 > limit) return { ok: false };
    this.#takeLocal(key);
    return { ok: true, total: this.total(listenerOf(key)) };
  }

  /** A slot whatever the count (a connection accepted here: the caller decides on `open`). */
  take(key: string): Taken {
    this.#takeLocal(key);
    return { open: this.open(key), total: this.total(listenerOf(key)) };
  }

  /** Give back a slot taken here; false when none of `key` was (it is the supervisor's). */
  releaseLocal(key: string): boolean {
    const n = this.#local.get(key) ?? 0;
    if (n === 0) return false;
    if (n > 1) this.#local.set(key, n - 1); else this.#local.delete(key);
    this.closed(key);
    return true;
  }

  /** The slots taken here and still open, one key per slot (sent to the supervisor when the lease ends). */
  localKeys(): string[] {
    const keys: string[] = [];
    for (const [key, n] of this.#local) for (let i = 0; i < n; i++) keys.push(key);
    return keys;
  }

  #takeLocal(key: string): void {
    this.#local.set(key, (this.#local.get(key) ?? 0) + 1);
    this.counted(key, 1);
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
  /** The counting lease: which worker holds it, and whether its end was asked for ('lease-end' sent). */
  #lease: { worker: number; ending: boolean } | null = null;
  /** Slot requests of other workers (or of any, while the lease ends): answered once the holder's slots are counted here. */
  #parked: Array<{ worker: number; message: ConnRequest; reply(m: object): void }> = [];
  readonly #sendTo: (worker: number, m: object) => void;
  readonly #onLeaseFree: () => void;

  /**
   * `sendTo`: a message to a worker (dropped if it is gone); `onLeaseFree`: the lease ended (the holder's
   * slots are counted here, or it is dead): other workers may accept now.
   */
  constructor(authWindowMs: number, opts: { sendTo?(worker: number, m: object): void; onLeaseFree?(): void } = {}) {
    this.#windowMs = authWindowMs;
    this.#sendTo = opts.sendTo ?? (() => undefined);
    this.#onLeaseFree = opts.onLeaseFree ?? (() => undefined);
  }

  /** The worker holding the counting lease (also while its end is under way), or null. */
  get leaseHolder(): number | null { return this.#lease?.worker ?? null; }

  /**
   * Let `worker` count slots alone: only while it is the only worker that takes any (the supervisor's
   * choice, supervisor.ts). It gets every count held now; until the lease ends, another worker's request
   * ends it first (parked meanwhile). False when a lease is held already.
   */
  grant(worker: number): boolean {
    if (this.#lease) return false;
    this.#lease = { worker, ending: false };
    this.#sendTo(worker, { t: 'lease', counts: [...this.#open], seen: this.seen(worker) });
    return true;
  }

  /**
   * Ask the holder for the slots it took (it answers 'lease-table', and counts by round trip from then on).
   * Until it answered or died, no other worker may take a slot: the supervisor lets none accept meanwhile.
   */
  endLease(): void {
    if (!this.#lease || this.#lease.ending) return;
    this.#lease.ending = true;
    this.#sendTo(this.#lease.worker, { t: 'lease-end' });
  }

  /** Every IP's recent failures, for a child that starts (relays reach it only from then on). */
  failureTable(): Array<[string, number[]]> {
    const out: Array<[string, number[]]> = [];
    for (const ip of [...this.#failures.keys()]) {
      const list = this.failures(ip);
      if (list.length) out.push([ip, list]);
    }
    return out;
  }

  /** The lease is over: the requests parked for it are answered on the counts that now hold every slot. */
  #leaseFree(): void {
    this.#lease = null;
    for (const p of this.#parked.splice(0)) this.handle(p.worker, p.message, p.reply, () => undefined);
    this.#onLeaseFree();
  }

  /**
   * One message from worker `worker`; `reply` answers it, `broadcast` tells every other worker.
   * Returns false for messages that are not about counters.
   */
  handle(worker: number, message: ConnRequest & { keys?: string[]; s?: number; at?: number },
    reply: (m: object) => void, broadcast: (m: object) => void): boolean {
    switch (message.t) {
      case 'conn+': {
        const lease = this.#lease;
        if (lease && (lease.ending || lease.worker !== worker)) {
          // The holder's counts are not here yet: answered once they are (its table, or its death).
          this.#parked.push({ worker, message, reply });
          this.endLease();
          return true;
        }
        // (From the holder itself: sent before it read the grant; it counted the request as taken and decides.)
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
        const released = (message.keys ?? [message.key!]).filter((key) => this.#release(worker, key));
        if (message.s !== undefined) this.#seen.set(worker, message.s);
        // The holder counts every slot: it hears of other workers' returns (its own it counted already).
        if (this.#lease && !this.#lease.ending && this.#lease.worker !== worker && released.length) this.#sendTo(this.#lease.worker, { t: 'lease-', keys: released });
        return true;
      }
      case 'lease-table': {
        // The slots the holder took alone, still open: its own from now on, given back by 'conn-' as others.
        for (const key of message.keys ?? []) this.take(worker, key);
        if (this.#lease?.worker === worker) this.#leaseFree();
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
    this.#parked = this.#parked.filter((p) => p.worker !== worker);
    // The holder's own slots went with it: the kernel closed their connections as it died.
    if (this.#lease?.worker === worker) this.#leaseFree();
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

  /** One slot of `worker`'s given back; false when it held none of `key`. */
  #release(worker: number, key: string): boolean {
    const held = this.#held.get(worker);
    const mine = held?.get(key) ?? 0;
    if (mine === 0) return false; // not this worker's (a stale message): never go below what others hold
    if (mine > 1) held!.set(key, mine - 1); else held!.delete(key);
    this.#drop(key, 1);
    return true;
  }

  #drop(key: string, n: number): void {
    const left = (this.#open.get(key) ?? n) - n;
    if (left > 0) this.#open.set(key, left); else this.#open.delete(key);
    const listener = listenerOf(key);
    const total = (this.#totals.get(listener) ?? n) - n;
    if (total > 0) this.#totals.set(listener, total); else this.#totals.delete(listener);
  }
}

/** A worker's request for a slot ('conn+'), and the other messages of CounterHost.handle. */
interface ConnRequest { t?: string; q?: number; key?: string; ip?: string; limit?: number; take?: boolean }

/** A slot's key is "<listener> <client address>". */
const listenerOf = (key: string): string => key.slice(0, key.indexOf(' '));
