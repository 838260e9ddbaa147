/**
 * Time limits for calls that all get the same limit: their deadlines come in the order the calls started,
 * so one timer, set for the oldest call still waiting, covers them all. Replaces a timer per call (the
 * store's calls are many and short: one setTimeout/clearTimeout pair each cost more than the call's own
 * work in the client).
 *
 * The sandbox keeps its own sweep (engine/sandbox/sandbox.ts: a set of live calls checked every 100 ms):
 * its calls settle out of order (several isolates, batches), and a queue like this one would keep every
 * call settled after a slow one — context, closures, journal — alive until that one's deadline.
 */
export interface Waiting {
  /** performance.now() at which it expires. */
  readonly deadline: number;
  /** Set once answered (by settle()) or expired: the sweep skips it. */
  settled: boolean;
  /** Called once, at the deadline, when still not settled (it sets `settled`). */
  expire(): void;
}

export class DeadlineQueue {
  readonly #queue: Waiting[] = [];
  #head = 0;
  #timer: NodeJS.Timeout | null = null;
  /** The sweep of a deadline whose timer ran, waiting for the sockets to be read first (see #arm). */
  #sweeping: NodeJS.Immediate | null = null;

  /** `waiting.deadline` must not be before that of any call added earlier (same time limit, later start). */
  add(waiting: Waiting): void {
    this.#queue.push(waiting);
    if (!this.#timer && !this.#sweeping) this.#arm(waiting.deadline);
  }

  /**
   * `waiting` was answered. Answers mostly come in the order of the calls (one connection to Redis): the
   * answered calls at the front are dropped at once, so the queue holds only calls in flight, and nothing
   * answered is kept alive until the next sweep.
   */
  settle(waiting: Waiting): void {
    waiting.settled = true;
    const queue = this.#queue;
    while (this.#head < queue.length && queue[this.#head]!.settled) this.#head++;
    this.#trim();
  }

  /** Expire every call still waiting now (the store closes). */
  expireAll(): void {
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#sweeping) clearImmediate(this.#sweeping);
    this.#timer = null;
    this.#sweeping = null;
    const waiting = this.#queue.splice(0);
    this.#head = 0;
    for (const w of waiting) if (!w.settled) w.expire();
  }

  /**
   * The sweep runs in the check phase after the deadline's timer, not in the timer itself: a process that gets the
   * CPU back late (descheduled, or its event loop held) runs its timers before it reads its sockets, and an answer
   * that came in time, waiting there, was failed as a timeout. Between the two the poll phase reads it.
   */
  #arm(deadline: number): void {
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#sweeping = setImmediate(() => this.#sweep());
    }, Math.max(1, Math.ceil(deadline - performance.now())));
  }

  #sweep(): void {
    this.#sweeping = null;
    const now = performance.now();
    const queue = this.#queue;
    while (this.#head < queue.length) {
      const w = queue[this.#head]!;
      if (!w.settled && w.deadline > now) break;
      this.#head++;
      if (!w.settled) w.expire();
    }
    this.#trim();
    if (this.#head < queue.length) this.#arm(queue[this.#head]!.deadline);
  }

  /** Forget the entries before the head: all of them when none is left, else once they are most of the array. */
  #trim(): void {
    const queue = this.#queue;
    if (this.#head === queue.length) {
      queue.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > queue.length) {
      queue.splice(0, this.#head);
      this.#head = 0;
    }
  }
}
