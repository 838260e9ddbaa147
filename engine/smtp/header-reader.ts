/**
 * Collects the header section of a message as it streams past, for the data hook. The section ends at
 * the first empty line. Each chunk is searched once, on its own (plus the two bytes before it, for an
 * end that straddles chunks): a header sent in many small pieces costs in proportion to its size,
 * where searching everything collected so far on every piece cost its square.
 */
const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const HT = 0x09;

let scanned = 0;

/** Spaces and tabs around a field name (RFC 5322 obs-optional allows them before the colon). */
const NAME_WSP = /^[ \t]+|[ \t]+$/g;

/**
 * The name of the field `line` holds, its colon at `colon`: without the spaces and tabs around it, and nothing
 * else. String.prototype.trim() also took U+00A0, U+3000, a vertical tab or a BOM off: the data hook saw
 * `X-Trusted` where the message had `X-Trusted<U+3000>`, which a header edit (header-edit.ts, by the same
 * rule) rightly does not match, so a script's `remove` of the field it saw left it in.
 */
export function fieldName(line: string, colon: number): string {
  return line.slice(0, colon).replace(NAME_WSP, '');
}

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
  readonly #maxFields: number;
  /** Fields seen so far: lines of the section that start with neither a space nor a tab (folded lines are not fields). */
  #fields = 0;
  #tooManyFields = false;
  /** A CR not followed by LF in the section (seen so far). */
  #bareCr = false;
  /**
   * Keep the chunks of the section for headers(). The SMTP intake does not: its spool writer has the bytes (in
   * its file, past the memory it may hold), and chunks kept here would hold up to maxHeaderBytes per connection.
   */
  readonly #keepChunks: boolean;

  /**
   * `maxBytes`: the largest header section accepted (see tooLarge); `maxFields`: the most fields (see
   * tooManyFields). Each field costs the data hook an entry of ctx.data.headers: a section of 1 MB holds ~250,000
   * short ones, enough for a script to run out of its time.
   */
  constructor(maxBytes: number, maxFields = Infinity, opts: { keepChunks?: boolean } = {}) {
    this.#maxBytes = maxBytes;
    this.#maxFields = maxFields;
    this.#keepChunks = opts.keepChunks ?? true;
  }

  /**
   * Length of the header section, the line break of its last field included and the empty line that ends
   * it not; -1 when no empty line came (so far): then the whole message is header section.
   */
  get sectionBytes(): number { return this.#sectionBytes; }

  /** The header section is over `maxBytes` or `maxFields`: the message must be refused. */
  get tooLarge(): boolean { return this.#tooLarge; }

  /**
   * The header section holds a CR not followed by LF: the message must be refused (push() returns false, the
   * section is still read to its end). Delivery sends every bare CR as a
   * line end (engine/delivery/dkim.ts withCrlf, nodemailer), while the fields here, the data hook's header edits
   * and a DKIM check split lines at LF only: `Subject: a<CR>X-Trusted: yes` was one field to the script (its
   * `remove` of X-Trusted missed it) and two to the next hop.
   */
  get bareCr(): boolean { return this.#bareCr; }

  /** The header section has more than `maxFields` fields (tooLarge is set too). */
  get tooManyFields(): boolean { return this.#tooManyFields; }

  /** Fields counted so far (all of them once the section has ended). */
  get fields(): number { return this.#fields; }

  /** Take the next chunk of the message; returns false once the header section is known to be refused (tooLarge, bareCr). */
  push(chunk: Buffer): boolean {
    return this.#take(chunk) && !this.#bareCr;
  }

  #take(chunk: Buffer): boolean {
    if (this.#sectionBytes >= 0 || this.#tooLarge) return !this.#tooLarge;
    const end = this.#findEnd(chunk);
    if (this.#fields > this.#maxFields) {
      this.#tooManyFields = true;
      return this.#refuse();
    }
    if (end >= 0) {
      this.#sectionBytes = end;
      if (end > this.#maxBytes) return this.#refuse();
      if (end > this.#seen && this.#keepChunks) this.#chunks.push(chunk);
      return true;
    }
    this.#seen += chunk.length;
    // Not ended yet: the section is at least one byte longer than what came so far, less the two tail bytes.
    if (this.#seen - 1 > this.#maxBytes) return this.#refuse();
    if (this.#keepChunks) this.#chunks.push(chunk);
    if (chunk.length >= 2) {
      this.#beforeLast = chunk[chunk.length - 2]!;
      this.#last = chunk[chunk.length - 1]!;
    } else if (chunk.length === 1) {
      this.#beforeLast = this.#last;
      this.#last = chunk[0]!;
    }
    return true;
  }

  /**
   * Header fields in order, unfolded (a message without an empty line is all header section). `section`: the
   * bytes of the header section, for a reader that keeps no chunks (from its start, sectionBytes long or more).
   */
  headers(section?: Buffer): Array<[string, string]> {
    if (this.#tooLarge) return [];
    const all = section ?? (this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks));
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
      if (colon > 0) out.push([fieldName(line, colon), line.slice(colon + 1).trim()]);
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
   * Counts the fields that start before it on the way: a line start (after LF) whose first byte is neither a
   * space nor a tab, the empty line excepted; one whose first bytes are in the next chunk is counted there.
   */
  #findEnd(chunk: Buffer): number {
    const c0 = chunk.length > 0 ? chunk[0]! : -1;
    const c1 = chunk.length > 1 ? chunk[1]! : -1;
    if (this.#last === CR && c0 !== -1 && c0 !== LF) this.#bareCr = true; // a CR that ended the previous chunk
    // Across the seam, earliest start first: LF CR | LF, then LF | LF and LF | CR LF.
    if (this.#beforeLast === LF && this.#last === CR) {
      if (c0 === LF) return this.#seen - 1;
      if (c0 !== -1) this.#fields++; // a line that starts with a lone CR
    } else if (this.#last === LF) {
      if (c0 === LF || (c0 === CR && c1 === LF)) return this.#seen;
      // A line start at the seam: counted here unless it is a CR whose next byte is not there yet (the next chunk's seam).
      if (c0 !== -1 && c0 !== SP && c0 !== HT && !(c0 === CR && c1 === -1)) this.#fields++;
    }
    // One pass for both forms, earliest first (mixed line ends included). A plain loop: the section usually
    // ends within the first few hundred bytes, sooner than two native searches are set up.
    const n = chunk.length;
    for (let i = 0; i < n; i++) {
      if (chunk[i] !== LF) {
        // A CR at the chunk's end is decided at the next chunk's seam.
        if (chunk[i] === CR && i + 1 < n && chunk[i + 1] !== LF) this.#bareCr = true;
        continue;
      }
      const next = i + 1 < n ? chunk[i + 1]! : -1;
      if (next === LF || (next === CR && i + 2 < n && chunk[i + 2] === LF)) {
        scanned += i + 1;
        return this.#seen + i + 1;
      }
      // A field starts after this LF (a line start at the chunk's end, or LF CR there, is the next chunk's seam).
      if (next !== -1 && next !== SP && next !== HT && !(next === CR && i + 2 === n)) this.#fields++;
    }
    scanned += n;
    return -1;
  }
}
