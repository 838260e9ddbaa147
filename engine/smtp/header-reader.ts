/** Collects the header section of a message as it streams past, for the data hook (bounded in size). */
const MAX_HEADER_BYTES = 256 * 1024;

export class HeaderReader {
  #chunks: Buffer[] = [];
  #bytes = 0;
  #done = false;

  push(chunk: Buffer): void {
    if (this.#done) return;
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
    const joined = this.#chunks.length > 1 ? Buffer.concat(this.#chunks) : chunk;
    if (this.#bytes > MAX_HEADER_BYTES || hasHeaderEnd(joined)) {
      this.#chunks = [joined];
      this.#done = true;
    }
  }

  /** Header fields in order, unfolded. */
  headers(): Array<[string, string]> {
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    const bytes = all.subarray(0, MAX_HEADER_BYTES);
    // Decode only the header section: up to the first line break of the blank line that ends it.
    const ends = [bytes.indexOf('\n\n'), bytes.indexOf('\n\r\n')].filter((i) => i >= 0);
    const text = (ends.length ? bytes.subarray(0, Math.min(...ends) + 1) : bytes).toString('utf8');
    const end = text.search(/\r?\n\r?\n/);
    const section = end >= 0 ? text.slice(0, end) : text;
    const out: Array<[string, string]> = [];
    for (const line of section.split(/\r?\n/)) {
      if (/^[ \t]/.test(line) && out.length) {
        out[out.length - 1]![1] += ' ' + line.trim();
        continue;
      }
      const colon = line.indexOf(':');
      if (colon > 0) out.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()]);
    }
    return out;
  }
}

function hasHeaderEnd(buf: Buffer): boolean {
  return buf.indexOf('\r\n\r\n') >= 0 || buf.indexOf('\n\n') >= 0;
}
