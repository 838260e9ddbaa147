/**
 * A counting semaphore whose limit is read on every acquire, so a reload that changes `concurrency`
 * applies to the next delivery. Waiters are served first come, first served.
 */
export class Limiter {
  readonly #limit: () => number;
  #busy = 0;
  #waiting: Array<() => void> = [];

  constructor(limit: () => number) { this.#limit = limit; }

  get busy(): number { return this.#busy; }
  get waiting(): number { return this.#waiting.length; }

  /** Resolves with a release function once a slot is free. Call it exactly once. */
  async acquire(): Promise<() => void> {
    if (this.#busy >= this.#limit() || this.#waiting.length) {
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
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

  #drain(): void {
    while (this.#waiting.length && this.#busy < this.#limit()) {
      this.#busy++;
      this.#waiting.shift()!();
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
