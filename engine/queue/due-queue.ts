/**
 * Message ids by the time their next attempt is due, in two lanes: messages never attempted (`new`) and the
 * retries of deferred ones. Each lane is a binary min-heap with lazy deletion (a re-timed or removed id leaves
 * a stale entry that is skipped when it reaches the top). When both have something due they take turns, as
 * Postfix's queue manager alternates its incoming and deferred queues: with one lane, earliest first, a
 * backlog of retries all due at once (after a restart, or `postern queue retry --all` after an outage) was
 * gone through before any mail that came in meanwhile, which was due later.
 */
export type Lane = 'new' | 'retry';

export class DueQueue {
  readonly #at = new Map<string, { time: number; lane: Lane }>();
  readonly #lanes: Record<Lane, Heap> = { new: new Heap(), retry: new Heap() };
  /** The lane served first when both have something due; changes at each take. */
  #turn: Lane = 'new';

  get size(): number { return this.#at.size; }
  has(id: string): boolean { return this.#at.has(id); }
  ids(): IterableIterator<string> { return this.#at.keys(); }
  clear(): void {
    this.#at.clear();
    this.#lanes.new = new Heap();
    this.#lanes.retry = new Heap();
  }

  set(id: string, time: number, lane: Lane = 'retry'): void {
    const now = this.#at.get(id);
    if (now?.time === time && now.lane === lane) return;
    this.#at.set(id, { time, lane });
    this.#lanes[lane].push([time, id]);
    if (this.#lanes[lane].length > 2 * this.#at.size + 1024) this.#rebuild();
  }

  delete(id: string): void { this.#at.delete(id); }

  /** The earliest entry of either lane, without taking it. */
  peek(): { id: string; time: number } | null {
    const a = this.#top('new');
    const b = this.#top('retry');
    const top = a && b ? (a[0] <= b[0] ? a : b) : a ?? b;
    return top ? { time: top[0], id: top[1] } : null;
  }

  /** Take an entry due at `now`: from the lane whose turn it is, or from the other when it has none due. */
  takeDue(now: number): string | null {
    const other: Lane = this.#turn === 'new' ? 'retry' : 'new';
    for (const lane of [this.#turn, other]) {
      const top = this.#top(lane);
      if (!top || top[0] > now) continue;
      this.#lanes[lane].pop();
      this.#at.delete(top[1]);
      this.#turn = lane === 'new' ? 'retry' : 'new';
      return top[1];
    }
    return null;
  }

  /** A lane's earliest entry that is not stale. */
  #top(lane: Lane): [number, string] | null {
    const heap = this.#lanes[lane];
    for (let top = heap.top(); top; top = heap.top()) {
      const at = this.#at.get(top[1]);
      if (at?.time === top[0] && at.lane === lane) return top;
      heap.pop();
    }
    return null;
  }

  #rebuild(): void {
    this.#lanes.new = new Heap();
    this.#lanes.retry = new Heap();
    for (const [id, { time, lane }] of this.#at) this.#lanes[lane].push([time, id]);
  }
}

/** A binary min-heap of [time, id]. */
class Heap {
  readonly #h: Array<[number, string]> = [];

  get length(): number { return this.#h.length; }
  top(): [number, string] | undefined { return this.#h[0]; }

  push(e: [number, string]): void {
    const h = this.#h;
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

  pop(): void {
    const h = this.#h;
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
