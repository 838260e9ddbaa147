/**
 * Failed authentications per client IP over a sliding window (RFC 4954 §9: slow down, then refuse), and
 * the rules that use them: when an address is refused, and how long a failure reply waits.
 * Shared by all listeners and all connections, so a client cannot reset its count by switching ports or
 * by keeping connections open; the store is pluggable so worker processes can share one count.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ListenerConfig } from '../config/schema.ts';

/**
 * Where failure times are kept. This process's memory by default; a multi-process server passes a store
 * shared by its workers. Keys are client IPs; times are milliseconds since the epoch.
 */
export interface AuthFailureStore {
  /** Record a failure of `key` at `now`; resolves to the failures of `key` since `since`, this one included. */
  add(key: string, now: number, since: number): Promise<number>;
  /** Failures of `key` since `since`. */
  count(key: string, since: number): Promise<number>;
  /**
   * A store shared by processes that decide guesses at once (Redis: every node's workers; the supervisor's
   * store: one server's): count the failures of `key` since `since` and the guesses being decided, and when
   * together they are fewer than `limit`, count this guess among the latter. Checked, then recorded after the
   * verification, a guess in each process passed the check before any of them was recorded. Without it, the
   * process deciding guesses is this one alone (oneAtATime), and the check is made before the guess.
   * `countSince` (≥ `since`): the failures compared with `limit` are those after it (the listener's own window);
   * `since` is how long they are kept (the longest window of the server's listeners).
   */
  claim?(key: string, now: number, since: number, limit: number, countSince?: number): Promise<FailureClaim>;
}

/** See AuthFailureStore.claim. */
export interface FailureClaim {
  /** Counted among the guesses being decided. */
  readonly granted: boolean;
  /** The failures within the window (guesses being decided not included). */
  readonly failures: number;
  /** Granted: the guess is decided. A failure is recorded (→ the failures with it), else the place is given back (→ null). */
  settle(failed: boolean): Promise<number | null>;
}

/** Places of guesses being decided, counted by every process of a server (MemoryAuthFailureStore's claim). */
export interface GuessPlaces {
  /** Take a place for `key` when fewer than `room` are taken: the places with it, or null. */
  take(key: string, room: number): Promise<number | null>;
  giveBack(key: string): Promise<void>;
}

/** How a guess was decided (AuthFailureLimiter.guess). */
export type GuessOutcome<T> =
  /** The address reached its limit: not decided. */
  | { kind: 'refused' }
  /** The store could not tell whether it did: not decided (fail closed). */
  | { kind: 'uncounted'; error: unknown }
  /** `failures`: the address's failures within the window with this one (-1: not recorded), null when it did not fail. */
  | { kind: 'decided'; result: T; failures: number | null };

/**
 * The failure times of one process, in a Map — or in a Map-like store that also tells the other worker
 * processes (engine/cluster/shared-counters.ts SharedFailureStore), so the limit holds for their sum.
 */
export interface FailureMap {
  get(ip: string): number[] | undefined;
  set(ip: string, times: number[]): unknown;
  delete(ip: string): unknown;
  keys(): IterableIterator<string>;
  readonly size: number;
  /** A failure was recorded in this process (not a prune). */
  recorded?(ip: string, at: number): void;
}

const NO_FAILURES = Promise.resolve(0);

/** How many of `times` are after `since`. */
const within = (times: readonly number[], since: number): number => times.reduce((n, t) => (t > since ? n + 1 : n), 0);

/**
 * `at`, a failure of `key`, recorded in `failures` with `times` (its earlier ones still counted), and the
 * addresses whose failures are all at or before `since` dropped. The map is kept in order of each address's
 * latest failure (the key moves to the end), so the expired ones are at its front: dropping them costs a step
 * per address dropped, not a walk over every address. Without it an address that failed once stayed for the
 * process's life unless it came back (a process told of other processes' failures never looked again).
 */
export function failureRecorded(failures: FailureMap, key: string, times: number[], at: number, since: number): number[] {
  times.push(at);
  failures.delete(key);
  failures.set(key, times);
  dropExpired(failures, since);
  return times;
}

/** Drop, from the front of `failures`, the addresses with no failure after `since` (see failureRecorded). */
function dropExpired(failures: FailureMap, since: number): void {
  const now = Date.now();
  for (const key of failures.keys()) {
    const times = failures.get(key);
    const latest = times?.length ? times[times.length - 1]! : -Infinity;
    if (latest > now) {
      // Recorded before the clock was set back: counted as now from here on (as #recent does), and moved to
      // the end, so that it neither stays for the length of the step nor holds back the pruning behind it.
      failures.delete(key);
      failures.set(key, times!.map((t) => Math.min(t, now)));
      continue;
    }
    if (latest > since) return;
    failures.delete(key);
  }
}

export class MemoryAuthFailureStore implements AuthFailureStore {
  readonly #failures: FailureMap;

  /** See AuthFailureStore.claim: set when the failures are shared with other processes through `places`. */
  readonly claim?: AuthFailureStore['claim'];

  constructor(failures: FailureMap = new Map<string, number[]>(), places?: GuessPlaces) {
    this.#failures = failures;
    if (places) this.claim = (key, now, since, limit, countSince) => this.#claim(places, key, now, since, limit, countSince ?? since);
  }

  /**
   * The failures are this process's list (the other processes' relayed to it), the places a count the
   * processes share (the supervisor's store). A process's failure is sent before its place is given back,
   * and the relays to this process come before the answer to its own take: a guess being decided elsewhere
   * is counted here as a place, or as a failure, or (for a moment) as both, which only makes this one wait.
   */
  async #claim(places: GuessPlaces, key: string, now: number, since: number, limit: number, countSince: number): Promise<FailureClaim> {
    const window = now - since;
    const counted = now - countSince;
    const refused = (failures: number): FailureClaim => ({ granted: false, failures, settle: () => Promise.resolve(null) });
    const before = within(this.#recent(key, since), now - counted);
    if (before >= limit) return refused(before);
    const taken = await places.take(key, limit - before);
    const later = Date.now();
    const failures = within(this.#recent(key, later - window), later - counted); // failures relayed while the place was taken
    if (taken === null) return refused(failures);
    if (failures + taken > limit) {
      await places.giveBack(key);
      return refused(failures);
    }
    return {
      granted: true,
      failures,
      settle: async (failed) => {
        // Recorded (and sent to the others) before the place is given back: see above.
        const count = failed ? await this.add(key, Date.now(), Date.now() - window) : null;
        await places.giveBack(key);
        return count;
      },
    };
  }

  /** Addresses whose failures are kept now (the metric postern_auth_failure_addresses). */
  get addresses(): number { return this.#failures.size; }

  add(key: string, now: number, since: number): Promise<number> {
    // Many failing addresses (rotating IPv4 addresses, IPv6 networks) must not grow the map: expired ones go.
    const list = failureRecorded(this.#failures, key, this.#recent(key, since), now, since);
    this.#failures.recorded?.(key, now);
    return Promise.resolve(list.length);
  }

  count(key: string, since: number): Promise<number> {
    // Most addresses never failed: asked at every connection and AUTH, they cost no list and no delete.
    const list = this.#failures.get(key);
    if (list === undefined) return NO_FAILURES;
    // Not pruned to `since`: a listener with a shorter window than the others asks for fewer (add() prunes).
    const latest = Date.now();
    const clamped = list.map((t) => Math.min(t, latest)); // see #recent
    this.#failures.set(key, clamped);
    return Promise.resolve(within(clamped, since));
  }

  #recent(key: string, since: number): number[] {
    const latest = Date.now();
    // A time ahead of the clock was recorded before the clock was set back: counted as now, its window ends
    // as it would have, instead of when the clock catches up (an address refused an hour more after a step).
    const list = (this.#failures.get(key) ?? []).map((t) => Math.min(t, latest)).filter((t) => t > since);
    if (list.length) this.#failures.set(key, list); else this.#failures.delete(key);
    return list;
  }
}

/**
 * While the failures are below the limit but the places left are all taken by guesses being decided elsewhere
 * (logins in parallel from one address: a NAT), a guess waits for them this long at most, looking again this
 * often, then fails closed. They are decided within the time of one verification and one auth script.
 */
const CLAIM_WAIT_MS = 10_000;
const CLAIM_RETRY_MS = 20;

/** A place among the guesses of `ip` (see AuthFailureStore.claim): refused only when the failures reach the limit. */
async function claimPlace(claim: NonNullable<AuthFailureStore['claim']>, ip: string, windowMs: number, countMs: number, limit: number): Promise<FailureClaim> {
  const deadline = performance.now() + CLAIM_WAIT_MS;
  for (;;) {
    const now = Date.now();
    const claimed = await claim(ip, now, now - windowMs, limit, now - countMs);
    if (claimed.granted || claimed.failures >= limit) return claimed;
    if (performance.now() > deadline) throw new Error(`auth failures: the places below the limit stayed held by guesses being decided for ${CLAIM_WAIT_MS} ms`);
    await sleep(CLAIM_RETRY_MS);
  }
}

type FailureLimits = Pick<ListenerConfig['limits'], 'authFailuresPerIp' | 'authFailuresBeforeDelay' | 'authFailureDelayMs'> & Partial<Pick<ListenerConfig['limits'], 'authFailureWindowMs'>>;

/** The longest extra wait of one failure reply. */
const MAX_DELAY_MS = 30_000;

export class AuthFailureLimiter {
  readonly windowMs: number;
  readonly #store: AuthFailureStore;
  /** Per address, the end of the decision running now (see oneAtATime). */
  readonly #running = new Map<string, Promise<void>>();

  constructor(windowMs: number, store: AuthFailureStore = new MemoryAuthFailureStore()) {
    this.windowMs = windowMs;
    this.#store = store;
  }

  /** Count one failed AUTH from `ip`; resolves to its failures within the window. */
  record(ip: string, now = Date.now()): Promise<number> {
    return this.#store.add(ip, now, now - this.windowMs);
  }

  count(ip: string, now = Date.now(), windowMs = this.windowMs): Promise<number> {
    return this.#store.count(ip, now - windowMs);
  }

  /**
   * The window a listener's failures are judged in: its own. The counts are kept for the longest of the server's
   * listeners (this.windowMs), an MX's included (10 minutes unless set), whose window made a submission
   * listener's 3 s one 10 minutes: an address that mistyped its password locked out that long.
   */
  #judgedIn(limits: FailureLimits): number {
    return Math.min(limits.authFailureWindowMs ?? this.windowMs, this.windowMs);
  }

  /**
   * `ip` may not authenticate now: it reached the listener's authFailuresPerIp. Applies to new connections
   * and to every AUTH on connections already open.
   */
  async refused(ip: string, limits: FailureLimits, now = Date.now()): Promise<boolean> {
    return (await this.count(ip, now, this.#judgedIn(limits))) >= limits.authFailuresPerIp;
  }

  /**
   * One guess from `ip`, decided by `decide` (verify the credentials) unless the address reached its limit,
   * with its failure counted when `failed` says so. With a store that claims (see AuthFailureStore.claim) the
   * guess is counted before it is decided, in one step with the check: the limit bounds the guesses decided over
   * every process and node sharing the store. A right password uses up nothing. A store that cannot
   * answer the check decides nothing (fail closed).
   */
  guess<T>(ip: string, limits: FailureLimits, decide: () => Promise<T>, failed: (result: T) => boolean): Promise<GuessOutcome<T>> {
    const claim = this.#store.claim?.bind(this.#store);
    return this.oneAtATime(ip, async (): Promise<GuessOutcome<T>> => {
      if (!claim) {
        try {
          if (await this.refused(ip, limits)) return { kind: 'refused' };
        } catch (error) {
          return { kind: 'uncounted', error };
        }
        const result = await decide();
        return { kind: 'decided', result, failures: failed(result) ? await this.record(ip).catch(() => -1) : null };
      }
      let claimed: FailureClaim;
      try {
        claimed = await claimPlace(claim, ip, this.windowMs, this.#judgedIn(limits), limits.authFailuresPerIp);
      } catch (error) {
        return { kind: 'uncounted', error };
      }
      if (!claimed.granted) return { kind: 'refused' };
      let result: T;
      try {
        result = await decide();
      } catch (err) {
        // Not decided: the place is given back. One the store keeps (gone since) lapses (a minute in Redis).
        await claimed.settle(false).catch(() => undefined);
        throw err;
      }
      const isFailure = failed(result);
      return { kind: 'decided', result, failures: await claimed.settle(isFailure).catch(() => isFailure ? -1 : null) };
    });
  }

  /**
   * Run `decide` (check the limit, verify, record) when no other decision for `ip` is running in this
   * process. Otherwise attempts sent in parallel over many connections would all pass the check before any
   * failure is recorded: the limit would allow one more guess per open connection.
   */
  oneAtATime<T>(ip: string, decide: () => Promise<T>): Promise<T> {
    const run = (this.#running.get(ip) ?? Promise.resolve()).then(decide);
    const done = run.then(() => undefined, () => undefined);
    this.#running.set(ip, done);
    void done.then(() => { if (this.#running.get(ip) === done) this.#running.delete(ip); });
    return run;
  }

  /** Extra wait before the reply to a connection's `failures`-th failed AUTH (0 up to authFailuresBeforeDelay). */
  static delayMs(failures: number, limits: FailureLimits): number {
    const over = failures - limits.authFailuresBeforeDelay;
    return over > 0 ? Math.min(over * limits.authFailureDelayMs, MAX_DELAY_MS) : 0;
  }
}
