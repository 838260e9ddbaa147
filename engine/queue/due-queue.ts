/**
 * Message ids by the time their next attempt is due: a binary min-heap with lazy deletion (a re-timed or
 * removed id leaves a stale entry that is skipped when it reaches the top).
 */
export class DueQueue {
  readonly #at = new Map<string, number>();
  #heap: Array<[number, string]> = [];

  get size(): number { return this.#at.size; }
  has(id: string): boolean { return this.#at.has(id); }
  ids(): IterableIterator<string> { return this.#at.keys(); }
  clear(): void { this.#at.clear(); this.#heap = []; }

  set(id: string, time: number): void {
    if (this.#at.get(id) === time) return;
    this.#at.set(id, time);
    this.#push([time, id]);
    if (this.#heap.length > 2 * this.#at.size + 1024) this.#rebuild();
  }

  delete(id: string): void { this.#at.delete(id); }

  /** The earliest entry, without taking it. */
  peek(): { id: string; time: number } | null {
    this.#dropStale();
    const top = this.#heap[0];
    return top ? { time: top[0], id: top[1] } : null;
  }

  /** Take the earliest entry if it is due at `now`. */
  takeDue(now: number): string | null {
    const top = this.peek();
    if (!top || top.time > now) return null;
    this.#pop();
    this.#at.delete(top.id);
    return top.id;
  }

  #dropStale(): void {
    while (this.#heap.length) {
      const [time, id] = this.#heap[0]!;
      if (this.#at.get(id) === time) return;
      this.#pop();
    }
  }

  #rebuild(): void {
    this.#heap = [];
    for (const [id, time] of this.#at) this.#push([time, id]);
  }

  #push(e: [number, string]): void {
    const h = this.#heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (h[p]![0] <= e[0]) break;
      h[i] = h[p]!;
      i = p;
    }
    h[i] = e;
  }

  #pop(): void {
    const h = this.#heap;
    const last = h.pop()!;
    if (!h.length) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= h.length) break;
      const r = l + 1;
      const c = r < h.length && h[r]![0] < h[l]![0] ? r : l;
      if (h[c]![0] >= last[0]) break;
      h[i] = h[c]!;
      i = c;
    }
    h[i] = last;
  }
}
