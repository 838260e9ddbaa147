/**
 * Collects the header section of a message as it streams past, for the data hook. The section ends at
 * the first empty line. Each chunk is searched once, on its own (plus the two bytes before it, for an
 * end that straddles chunks): a header sent in many small pieces costs in proportion to its size,
 * where searching everything collected so far on every piece cost its square.
 */
const LF = 0x0a;
const CR = 0x0d;

let scanned = 0;

/** Bytes the header readers of this process have searched so far (tests check it grows linearly). */
export function headerBytesScanned(): number { return scanned; }

export class HeaderReader {
  readonly #maxBytes: number;
  #chunks: Buffer[] = [];
  /** Bytes pushed before the current chunk. */
  #seen = 0;
  /** The last two bytes pushed (-1: none). A message starts as if after a line break, so an empty first line ends it. */
  #beforeLast = -1;
  #last = LF;
  /** Length of the header section up to and including the line break before the empty line; -1 until found. */
  #sectionBytes = -1;
  #tooLarge = false;

  /** `maxBytes`: the largest header section accepted (see tooLarge). */
  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /**
   * Length of the header section, the line break of its last field included and the empty line that ends
   * it not; -1 when no empty line came (so far): then the whole message is header section.
   */
  get sectionBytes(): number { return this.#sectionBytes; }

  /** The header section is over `maxBytes`: the message must be refused. */
  get tooLarge(): boolean { return this.#tooLarge; }

  /** Take the next chunk of the message; returns false once the header section is known to be too large. */
  push(chunk: Buffer): boolean {
    if (this.#sectionBytes >= 0 || this.#tooLarge) return !this.#tooLarge;
    const end = this.#findEnd(chunk);
    if (end >= 0) {
      this.#sectionBytes = end;
      if (end > this.#maxBytes) return this.#refuse();
      if (end > this.#seen) this.#chunks.push(chunk);
      return true;
    }
    this.#seen += chunk.length;
    // Not ended yet: the section is at least one byte longer than what came so far, less the two tail bytes.
    if (this.#seen - 1 > this.#maxBytes) return this.#refuse();
    this.#chunks.push(chunk);
    if (chunk.length >= 2) {
      this.#beforeLast = chunk[chunk.length - 2]!;
      this.#last = chunk[chunk.length - 1]!;
    } else if (chunk.length === 1) {
      this.#beforeLast = this.#last;
      this.#last = chunk[0]!;
    }
    return true;
  }

  /** Header fields in order, unfolded (a message without an empty line is all header section). */
  headers(): Array<[string, string]> {
    if (this.#tooLarge) return [];
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    const text = (this.#sectionBytes >= 0 ? all.subarray(0, this.#sectionBytes) : all).toString('utf8');
    const out: Array<[string, string]> = [];
    // Line by line (a line ends at LF, a CR before it dropped), without an array of the lines first.
    for (let start = 0; start <= text.length;) {
      let end = text.indexOf('\n', start);
      if (end < 0) end = text.length;
      const line = text.slice(start, end > start && text.charCodeAt(end - 1) === 0x0d ? end - 1 : end);
      start = end + 1;
      const first = line.charCodeAt(0);
      if ((first === 0x20 || first === 0x09) && out.length) {
        out[out.length - 1]![1] += ' ' + line.trim();
        continue;
      }
      const colon = line.indexOf(':');
      if (colon > 0) out.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()]);
    }
    return out;
  }

  #refuse(): false {
    this.#tooLarge = true;
    this.#chunks = [];
    return false;
  }

  /**
   * Where the header section ends (its length, the line break before the empty line included) if the
   * empty line shows up in this chunk or across its start; -1 otherwise. An empty line is LF LF or LF CR LF.
   */
  #findEnd(chunk: Buffer): number {
    const c0 = chunk.length > 0 ? chunk[0]! : -1;
    const c1 = chunk.length > 1 ? chunk[1]! : -1;
    // Across the seam, earliest start first: LF CR | LF, then LF | LF and LF | CR LF.
    if (this.#beforeLast === LF && this.#last === CR && c0 === LF) return this.#seen - 1;
    if (this.#last === LF && (c0 === LF || (c0 === CR && c1 === LF))) return this.#seen;
    // One pass for both forms, earliest first (mixed line ends included). A plain loop: the section usually
    // ends within the first few hundred bytes, sooner than two native searches are set up.
    const n = chunk.length;
    for (let i = 0; i < n; i++) {
      if (chunk[i] !== LF) continue;
      const next = i + 1 < n ? chunk[i + 1] : -1;
      if (next === LF || (next === CR && i + 2 < n && chunk[i + 2] === LF)) {
        scanned += i + 1;
        return this.#seen + i + 1;
      }
    }
    scanned += n;
    return -1;
  }
}
