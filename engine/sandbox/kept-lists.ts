/**
 * A context list that grows call by call (a transaction's recipients), sent into each isolate as what changed
 * since that isolate last saw it instead of whole on every call: a RCPT's cost would otherwise grow with the
 * recipients before it (4 000 pipelined RCPTs: 6 s of CPU, the later calls past their time limit).
 */

/** One change: the item at `index` is now `item` (index = the length so far: appended). */
type Change = readonly [index: number, item: unknown];

/** Below this many items a list crosses whole, as any array does: the ordinary transaction keeps nothing. */
export const KEPT_LIST_MIN = 16;

/**
 * The host's list: appended to, or an item replaced (smtp-server replaces a repeated recipient), never
 * shrunk. Its changes are kept in order, so each isolate is sent only those it has not seen.
 */
export class GrowingList<T> {
  #items: T[] = [];
  // Replaced, never changed in place, when compacted: a view taken earlier still reads its own.
  #changes: Change[] = [];

  get length(): number {
    return this.#items.length;
  }

  push(item: T): void {
    this.#change(this.#items.length, item);
  }

  set(index: number, item: T): void {
    if (index < 0 || index >= this.#items.length) throw new RangeError(`no item ${index} in a list of ${this.#items.length}`);
    this.#change(index, item);
  }

  /** The list as it is now, for one call (what later changes do is not part of it). */
  view(): ListView<T> {
    return new ListView<T>(this.#changes, this.#changes.length, this.#items.length);
  }

  #change(index: number, item: T): void {
    this.#items[index] = item;
    // Replacements repeated without end (one address again and again) would grow the record: start it again.
    if (this.#changes.length >= 2 * this.#items.length + KEPT_LIST_MIN) this.#changes = this.#items.map((it, i) => [i, it] as const);
    else this.#changes.push([index, item]);
  }
}

/**
 * What one call sees of a GrowingList: the first `changeCount` changes of one record. As JSON (a copy into an
 * isolate, a replay recording) it is the plain array; the sandbox sends a long one as changes (see KeptLists).
 */
export class ListView<T> {
  readonly changes: readonly Change[];
  readonly changeCount: number;
  readonly length: number;

  constructor(changes: readonly Change[], changeCount: number, length: number) {
    this.changes = changes;
    this.changeCount = changeCount;
    this.length = length;
  }

  toJSON(): T[] {
    const items = new Array<T>(this.length);
    for (let i = 0; i < this.changeCount; i++) items[this.changes[i]![0]] = this.changes[i]![1] as T;
    return items;
  }
}

/**
 * How a long list crosses: the name the isolate keeps it under, how many of its changes the isolate has
 * (0: start it anew), the changes it has not, whether it forgets every list first, and the call's length.
 */
export type ListWire = [name: string, from: number, changes: Change[], forget: boolean, length: number];

/** Lists and their items an isolate keeps at most (then it forgets them all): memory, within memoryLimitMb. */
const KEPT_LISTS = 64;
const KEPT_ITEMS = 16_384;

/** A list as sent with one call: confirm() it once the call ran (the isolate then has its changes). */
export interface SentList { readonly wire: ListWire; readonly kept: { confirmed: number }; readonly count: number }

/**
 * Which lists one isolate keeps, as far as the host knows, and how many changes of each it has for certain: a
 * call is sent the changes past that (confirmed once the call ran). A stopped entry leaves the count where it
 * was: the isolate may have taken the changes or not, and it skips those it has (see keptRecipients in
 * isolate-runtime.ts), so a stop costs no list being sent whole again.
 */
export class KeptLists {
  #kept = new Map<readonly Change[], { name: string; confirmed: number; length: number }>();
  #items = 0;
  #nextName = 0;
  #forgetNext = false;
  /** A call that told the isolate to forget every list, not known to have run. */
  #forgetSent: SentList | null = null;

  wire(view: ListView<unknown>): SentList {
    let forget = this.#forgetNext;
    if (!forget && !this.#kept.has(view.changes) && (this.#kept.size >= KEPT_LISTS || this.#items + view.length > KEPT_ITEMS)) forget = true;
    if (forget) {
      this.#forgetNext = false;
      this.#kept.clear();
      this.#items = 0;
    }
    let kept = this.#kept.get(view.changes);
    if (kept === undefined || kept.confirmed > view.changeCount) {
      // Names are never given again (a list forgotten and sent anew is another list to the isolate).
      kept = { name: `l${(this.#nextName++).toString(36)}`, confirmed: 0, length: 0 };
      this.#kept.set(view.changes, kept);
    }
    if (view.length > kept.length) {
      this.#items += view.length - kept.length;
      kept.length = view.length;
    }
    const from = kept.confirmed;
    const sent: SentList = { wire: [kept.name, from, view.changes.slice(from, view.changeCount) as Change[], forget, view.length], kept, count: view.changeCount };
    if (forget) this.#forgetSent = sent;
    return sent;
  }

  confirm(sent: SentList): void {
    if (sent.kept.confirmed < sent.count) sent.kept.confirmed = sent.count;
    if (this.#forgetSent === sent) this.#forgetSent = null;
  }

  /** An entry was stopped or failed: only a forget it may not have done makes the host's counts unknown. */
  stopped(): void {
    if (this.#forgetSent !== null) this.reset();
  }

  /** The host no longer knows what the isolate keeps: every list is sent anew, and the isolate forgets first. */
  reset(): void {
    this.#kept.clear();
    this.#items = 0;
    this.#forgetNext = true;
    this.#forgetSent = null;
  }
}
