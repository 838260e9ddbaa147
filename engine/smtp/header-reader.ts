/**
 * Collects the header section of a message as it streams past, for the data hook. The section ends at
 * the first empty line, or at the first line that is no field (see noEmptyLine). Each chunk is searched
 * once, on its own (the state of the line it continues carried over): a header sent in many small pieces
 * costs in proportion to its size, where searching everything collected so far on every piece cost its square.
 */
const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const HT = 0x09;

let scanned = 0;

/**
 * The name of the field `line` holds, its colon at `colon`: without the spaces and tabs around it, and nothing
 * else. String.prototype.trim() also took U+00A0, U+3000, a vertical tab or a BOM off: the data hook saw
 * `X-Trusted` where the message had `X-Trusted<U+3000>`, which a header edit (header-edit.ts, by the same
 * rule) rightly does not match, so a script's `remove` of the field it saw left it in.
 */
export function fieldName(line: string, colon: number): string {
  // By index, not /^[ \t]+|[ \t]+$/g: that tried `[ \t]+$` from each blank of a run that text follows, to the
  // run's end (the run's square: 40 s for a line of 200,000 blanks within the name, as a section starting with a folded line holds).
  let start = 0;
  let end = colon;
  while (start < end && isWsp(line.charCodeAt(start))) start++;
  while (end > start && isWsp(line.charCodeAt(end - 1))) end--;
  return line.slice(start, end);
}

const isWsp = (c: number): boolean => c === 0x20 || c === 0x09;

/** Bytes the header readers of this process have searched so far (tests check it grows linearly). */
export function headerBytesScanned(): number { return scanned; }

// Where the reader is in the line it is reading (see #scan):
/** The first byte of a line. */
const LINE_START = 0;
/** A CR at a line start: with LF it is the empty line, with anything else a bare CR. */
const LINE_START_CR = 1;
/** In a field name. */
const NAME = 2;
/** Spaces or tabs after a field name, before its colon (RFC 5322 obs-optional). */
const NAME_SPACE = 3;
/** After a field's colon, or in a folded line: up to the line's end. */
const VALUE = 4;
/** A CR in such a line: with LF it ends the line, with anything else it is a bare CR. */
const VALUE_CR = 5;

/** `received` in lower case, byte by byte (a name byte is compared OR 0x20: ASCII letters in either case). */
const RECEIVED = Buffer.from('received');

/** RFC 5322 ftext: printable ASCII but the colon. */
const isFtext = (b: number): boolean => b >= 0x21 && b <= 0x7e && b !== 0x3a;

export class HeaderReader {
  readonly #maxBytes: number;
  #chunks: Buffer[] = [];
  /** Bytes pushed before the current chunk. */
  #seen = 0;
  /** The state of the line being read; a message starts at a line start (so an empty first line ends the section). */
  #at = LINE_START;
  /** Where the line being read starts (bytes from the message's start). */
  #lineStart = 0;
  /** Length of the header section up to and including the line break before the line that ends it; -1 until found. */
  #sectionBytes = -1;
  /** The section was ended by a line that is no field (#scan), not by an empty line. */
  #noEmptyLine = false;
  #tooLarge = false;
  readonly #maxFields: number;
  /** Fields seen so far: lines of the section that start with neither a space nor a tab (folded lines are not fields). */
  #fields = 0;
  #tooManyFields = false;
  /** A CR not followed by LF in the section (seen so far). */
  #bareCr = false;
  /** A NUL in a field of the section (seen so far). */
  #nul = false;
  /** Received fields seen so far (the hop count). */
  #received = 0;
  /** In a field name: how much of `received` it matched so far; -1 once it is another name. */
  #nameMatched = -1;
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
   * Length of the header section, the line break of its last field included and the line that ends it not
   * (the empty line, or the first line that is no field: see noEmptyLine); -1 when no such line came (so far):
   * then the whole message is header section.
   */
  get sectionBytes(): number { return this.#sectionBytes; }

  /**
   * The header section was ended by a line that is neither a field (`name:`, the name printable ASCII without
   * spaces, then optional spaces or tabs) nor a folded line, not by an empty line: that line starts the body.
   * Postfix (cleanup, its is_header() rule) and Exim read it so, and write the empty line that was missing; read
   * as header section, `Subject: x<CRLF>Buy now<CRLF>` had no body for the data hook (ctx.message.text() was
   * empty) and a body for the next hop and the reader, so a content check never saw the text delivered. The
   * intake writes the empty line (message-intake.ts), so every next hop reads the body the hook read.
   */
  get noEmptyLine(): boolean { return this.#noEmptyLine; }

  /**
   * Where the body starts (from the message's start), given the byte at sectionBytes: past the empty line (CR LF
   * or LF), or at sectionBytes when there was none (noEmptyLine); -1 while the section has not ended.
   */
  bodyAt(byteAtSectionEnd: number | undefined): number {
    const at = this.#sectionBytes;
    if (at < 0 || this.#noEmptyLine) return at;
    return at + (byteAtSectionEnd === CR ? 2 : 1);
  }

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

  /**
   * A field of the header section holds a NUL: the message must be refused, as for a bare CR. A next hop written
   * in C ends the field there: a real Postfix delivered `From: ceo@example.com<NUL>@evil.test` as
   * `From: ceo@example.com`, while the data hook saw the whole value (a sender domain evil.test). A NUL that
   * starts a line or sits in a field name makes that line no field (noEmptyLine): body, which keeps it.
   */
  get nul(): boolean { return this.#nul; }

  /** The header section has more than `maxFields` fields (tooLarge is set too). */
  get tooManyFields(): boolean { return this.#tooManyFields; }

  /** Fields counted so far (all of them once the section has ended). */
  get fields(): number { return this.#fields; }

  /** Received fields counted so far (name compared case-insensitively): the hops the message has made. */
  get received(): number { return this.#received; }

  /** Take the next chunk of the message; returns false once the header section is known to be refused (tooLarge, bareCr, nul). */
  push(chunk: Buffer): boolean {
    return this.#take(chunk) && !this.#bareCr && !this.#nul;
  }

  #take(chunk: Buffer): boolean {
    if (this.#sectionBytes >= 0 || this.#tooLarge) return !this.#tooLarge;
    const end = this.#scan(chunk);
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
    // Not ended yet: the section is at least as long as what came so far, less a CR that may start the empty line.
    if (this.#seen - 1 > this.#maxBytes) return this.#refuse();
    if (this.#keepChunks) this.#chunks.push(chunk);
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
   * Where the header section ends (its length, the line break before the line that ends it included) if that
   * line starts in this chunk or came whole with it; -1 otherwise. The section ends at an empty line (LF, or CR
   * LF) or at a line that is no field (see noEmptyLine). Counts the fields on the way and notes a bare CR. One
   * byte at a time, the state carried from chunk to chunk (#at), so any chunking gives the same answer; a plain
   * loop: the section usually ends within the first few hundred bytes.
   */
  #scan(chunk: Buffer): number {
    const n = chunk.length;
    let at = this.#at;
    for (let i = 0; i < n; i++) {
      const b = chunk[i]!;
      switch (at) {
        case LINE_START:
          this.#lineStart = this.#seen + i;
          if (b === LF) return this.#ended(i, at, false);
          if (b === CR) at = LINE_START_CR;
          else if (b === SP || b === HT) at = VALUE; // a folded line
          else if (isFtext(b)) { this.#fields++; this.#nameMatched = (b | 0x20) === RECEIVED[0] ? 1 : -1; at = NAME; }
          else return this.#ended(i, at, true);
          break;
        case LINE_START_CR:
          if (b === LF) return this.#ended(i, at, false);
          this.#bareCr = true; // a lone CR starts this line: refused (it stays a line, as it was counted)
          this.#fields++;
          at = b === CR ? VALUE_CR : VALUE;
          break;
        case NAME:
          if (b === SP || b === HT) at = NAME_SPACE;
          else if (b === 0x3a) { this.#fieldNamed(); at = VALUE; }
          else if (!isFtext(b)) return this.#ended(i, at, true);
          else if (this.#nameMatched >= 0) this.#nameMatched = (b | 0x20) === RECEIVED[this.#nameMatched] ? this.#nameMatched + 1 : -1;
          break;
        case NAME_SPACE:
          if (b === 0x3a) { this.#fieldNamed(); at = VALUE; }
          else if (b !== SP && b !== HT) return this.#ended(i, at, true);
          break;
        case VALUE:
          if (b === LF) at = LINE_START;
          else if (b === CR) at = VALUE_CR;
          else if (b === 0) this.#nul = true;
          break;
        case VALUE_CR:
          if (b === LF) at = LINE_START;
          else if (b !== CR) { this.#bareCr = true; at = VALUE; } else this.#bareCr = true;
          if (b === 0) this.#nul = true;
          break;
      }
    }
    this.#at = at;
    scanned += n;
    return -1;
  }

  /** A field's colon: count it if its whole name was `Received`. */
  #fieldNamed(): void {
    if (this.#nameMatched === RECEIVED.length) this.#received++;
    this.#nameMatched = -1;
  }

  /**
   * The line at #lineStart ends the section: an empty one, or (`noField`) one that is no field, whose start was
   * the last line start seen. A line that is no field and starts at the message's start: no header section at all.
   */
  #ended(i: number, at: number, noField: boolean): number {
    this.#at = at;
    scanned += i + 1;
    if (noField) {
      this.#noEmptyLine = true;
      // A field counted at this line's start was none.
      if (at === NAME || at === NAME_SPACE) this.#fields--;
    }
    return this.#lineStart;
  }
}
