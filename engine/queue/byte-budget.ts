/**
 * Bytes that may be held at once, handed out in order of asking: the queue runner's attempts each read their whole
 * message into memory, and a crowd of large messages waiting on slow next hops must not take the process's memory
 * (delivery.maxBytesInMemory). A request larger than the whole budget is granted once nothing else is held, so
 * no message waits for ever.
 */
export class ByteBudget {
  readonly #limit: () => number;
  #held = 0;
  readonly #waiting: Array<{ bytes: number; grant: () => void }> = [];

  constructor(limit: () => number) {
    this.#limit = limit;
  }

  /** Bytes held now, and requests waiting (for tests and status). */
  get held(): number { return this.#held; }
  get waiting(): number { return this.#waiting.length; }

  /** Whether take(bytes) would be granted at once. */
  fitsNow(bytes: number): boolean {
    return bytes <= 0 || (this.#waiting.length === 0 && this.#fits(bytes));
  }

  /** Resolves with the release of `bytes` once they fit (0 at once). The release may be called once. */
  async take(bytes: number): Promise<() => void> {
    if (bytes <= 0) return () => undefined;
    if (!this.fitsNow(bytes)) {
      await new Promise<void>((grant) => this.#waiting.push({ bytes, grant }));
    } else {
      this.#held += bytes;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#held -= bytes;
      this.#grantWaiting();
    };
  }

  /**
   * The limit may have changed (a reload): the requests it lets in now are granted, not at the next release, which
   * a message held at a slow next hop puts off for as long as it is held there.
   */
  limitChanged(): void {
    this.#grantWaiting();
  }

  #fits(bytes: number): boolean {
    return this.#held === 0 || this.#held + bytes <= this.#limit();
  }

  /** In order: a large request at the head is not overtaken by smaller ones behind it (it would wait for ever). */
  #grantWaiting(): void {
    while (this.#waiting.length > 0 && this.#fits(this.#waiting[0]!.bytes)) {
      const next = this.#waiting.shift()!;
      this.#held += next.bytes;
      next.grant();
    }
  }
}
