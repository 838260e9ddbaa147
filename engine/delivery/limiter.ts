/**
 * A counting semaphore whose limit is read on every acquire, so a reload that changes `concurrency`
 * applies to the next delivery. Waiters may name who they wait for (`owner`: a message): a freed slot goes
 * round the owners that wait, first come first served within each. One message with a transaction per
 * destination (a list's post to a hundred domains, slow or dead ones among them) otherwise queued all of
 * them ahead of any other message, which waited for every one to end. Waiters without an owner are each
 * their own.
 */
export class Limiter {
  readonly #limit: () => number;
  #busy = 0;
  /** Owners in the order they are served next; each with its waiters, oldest first. */
  readonly #waiting = new Map<unknown, Array<() => void>>();
  #waitingCount = 0;

  constructor(limit: () => number) { this.#limit = limit; }

  get busy(): number { return this.#busy; }
  get waiting(): number { return this.#waitingCount; }

  /** Resolves with a release function once a slot is free. Call it exactly once. */
  async acquire(owner: unknown = Symbol('waiter')): Promise<() => void> {
    if (this.#busy >= this.#limit() || this.#waitingCount) {
      await new Promise<void>((resolve) => {
        const line = this.#waiting.get(owner);
        if (line) line.push(resolve);
        else this.#waiting.set(owner, [resolve]);
        this.#waitingCount++;
      });
    } else {
      this.#busy++;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#busy--;
      this.#drain();
    };
  }

  /**
   * The limit may have changed (a reload): the waiters it lets in now get their slots, not at the next release, which
   * a next hop that reads slowly puts off for as long as it holds its slot.
   */
  limitChanged(): void {
    this.#drain();
  }

  #drain(): void {
    while (this.#waitingCount && this.#busy < this.#limit()) {
      const [owner, line] = this.#waiting.entries().next().value!;
      const next = line.shift()!;
      // Served: to the back of the round, behind the owners still waiting.
      this.#waiting.delete(owner);
      if (line.length) this.#waiting.set(owner, line);
      this.#waitingCount--;
      this.#busy++;
      next();
    }
  }
}

/**
 * One limiter per key (a destination), created on demand and dropped when idle. `released` is told each time a
 * slot of a key is given back (the queue runner then lets in the next of the messages it set aside for it).
 */
export class KeyedLimiter {
  readonly #limit: () => number;
  readonly #limiters = new Map<string, Limiter>();
  readonly #released: (key: string) => void;

  constructor(limit: () => number, released: (key: string) => void = () => undefined) {
    this.#limit = limit;
    this.#released = released;
  }

  async acquire(key: string): Promise<() => void> {
    let l = this.#limiters.get(key);
    if (!l) {
      l = new Limiter(this.#limit);
      this.#limiters.set(key, l);
    }
    const limiter = l;
    const release = await limiter.acquire();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      release();
      if (limiter.busy === 0 && limiter.waiting === 0) this.#limiters.delete(key);
      this.#released(key);
    };
  }

  /** The limit may have changed (a reload): every key's waiters it lets in now get their slots. */
  limitChanged(): void {
    for (const limiter of this.#limiters.values()) limiter.limitChanged();
  }

  busy(key: string): number { return this.#limiters.get(key)?.busy ?? 0; }
  waiting(key: string): number { return this.#limiters.get(key)?.waiting ?? 0; }

  /**
   * Every slot of `key` taken and as many callers again waiting for one: one more would only wait behind them
   * (holding whatever it holds meanwhile), not make the key's work go faster.
   */
  backlogged(key: string): boolean {
    const limit = this.#limit();
    return this.busy(key) >= limit && this.waiting(key) >= limit;
  }
}
