/**
 * Kept DNS answers (scripts' and delivery's), bounded by how many and by what they hold, in two parts (a segmented LRU).
 * A name enters `fresh`; asked again while kept, it moves to `reused`, where the least recently used goes first
 * once that part holds more than its share. A flood of names each asked once (a client's made-up HELO or From
 * domains, one per command; bounces to made-up sender domains) pushes out only other names asked once: with one list,
 * 10 000 of them pushed out every answer being reused (DNSBL and allow-list answers, the domains mail keeps going to).
 */
export interface CacheEntry { chars: number }

/** The part of the limits names asked more than once may take. */
const REUSED_SHARE = 0.8;

export class AnswerCache<E extends CacheEntry> {
  readonly #fresh = new Map<string, E>();
  readonly #reused = new Map<string, E>();
  #freshChars = 0;
  #reusedChars = 0;
  readonly #maxEntries: number;
  readonly #maxChars: number;

  constructor(maxEntries: number, maxChars: number) {
    this.#maxEntries = maxEntries;
    this.#maxChars = maxChars;
  }

  get size(): number { return this.#fresh.size + this.#reused.size; }
  get chars(): number { return this.#freshChars + this.#reusedChars; }

  /** The entry of `key`, now the most recently used: an entry asked for again moves to the reused part. */
  use(key: string): E | undefined {
    const reused = this.#reused.get(key);
    if (reused) {
      this.#reused.delete(key);
      this.#reused.set(key, reused);
      return reused;
    }
    const fresh = this.#fresh.get(key);
    if (!fresh) return undefined;
    this.#fresh.delete(key);
    this.#freshChars -= fresh.chars;
    this.#reused.set(key, fresh);
    this.#reusedChars += fresh.chars;
    this.#trim();
    return fresh;
  }

  /** Whether `entry` is still the one kept for `key` (not replaced or pushed out). */
  holds(key: string, entry: E): boolean {
    return this.#fresh.get(key) === entry || this.#reused.get(key) === entry;
  }

  /**
   * Keeps `entry` for `key`, replacing what was kept: a new name in the fresh part; a name already asked again (a new
   * answer once its TTL ran out) stays in the reused part, or each refresh put it back among the names asked once,
   * where a flood of those pushed it out.
   */
  set(key: string, entry: E): void {
    const reused = this.#reused.has(key);
    this.delete(key);
    if (reused) {
      this.#reused.set(key, entry);
      this.#reusedChars += entry.chars;
    } else {
      this.#fresh.set(key, entry);
      this.#freshChars += entry.chars;
    }
    this.#trim();
  }

  /** `entry` (kept for `key`) now holds `chars`. */
  resize(key: string, entry: E, chars: number): void {
    if (this.#fresh.get(key) === entry) this.#freshChars += chars - entry.chars;
    else if (this.#reused.get(key) === entry) this.#reusedChars += chars - entry.chars;
    entry.chars = chars;
    this.#trim();
  }

  delete(key: string): void {
    const fresh = this.#fresh.get(key);
    if (fresh) {
      this.#fresh.delete(key);
      this.#freshChars -= fresh.chars;
    }
    const reused = this.#reused.get(key);
    if (reused) {
      this.#reused.delete(key);
      this.#reusedChars -= reused.chars;
    }
  }

  /**
   * While over a limit: the least recently used reused entry when that part is over its share (or the fresh part
   * holds only the newest), else the oldest fresh one. The newest entry is kept, whatever its size.
   */
  #trim(): void {
    while (this.size > this.#maxEntries || (this.chars > this.#maxChars && this.size > 1)) {
      const reusedOver = this.#reused.size > this.#maxEntries * REUSED_SHARE || this.#reusedChars > this.#maxChars * REUSED_SHARE;
      const from = (reusedOver || this.#fresh.size <= 1) && this.#reused.size > 0 ? this.#reused : this.#fresh;
      this.delete(from.keys().next().value!);
    }
  }
}
