/**
 * Whether a client has already sent more after the command line being handled (before it could read the
 * reply), as Postfix asks its input buffer for RFC 2920's "must be last in a group" commands. smtp-server's
 * parser keeps the rest of a chunk in a closure, so this follows the same input: each chunk it handles, and
 * each command line it hands out (every line ends at an LF, so the LF after the cursor is that line's end).
 */
import type { Writable } from 'node:stream';

type WriteCallback = (err?: Error | null) => void;
type ChunkWriter = (chunk: Buffer, encoding: BufferEncoding, next: WriteCallback) => void;

const followed = new WeakMap<object, PipelinedInput>();

export class PipelinedInput {
  /** Start following a parser's input (before it reads any). */
  static follow(parser: Writable): void {
    followed.set(parser, new PipelinedInput(parser));
  }

  /** The input of a parser followed, if it is. */
  static of(parser: object): PipelinedInput | undefined {
    return followed.get(parser);
  }

  readonly #parser: Writable;
  /** The chunk the parser is reading lines from, and where the next line starts in it. */
  #chunk: Buffer = Buffer.alloc(0);
  #cursor = 0;
  /** The length of the chunk the stream handed the parser (counted in its writableLength until it is done). */
  #handedLength = 0;
  /** The stream's callback for that chunk while the parser is on it (else null). */
  #handedDone: WriteCallback | null = null;
  /** Called in its place: one function per parser, not a closure per chunk. */
  readonly #handedDoneNow = (err?: Error | null): void => {
    const done = this.#handedDone!;
    this.#handedDone = null;
    done(err);
  };

  private constructor(parser: Writable) {
    this.#parser = parser;
    const write = (parser as unknown as { _write: ChunkWriter })._write;
    // Every chunk passes here: those the stream hands over, and the rests the parser passes itself (the
    // message after a DATA line, the commands after a message's final dot).
    (parser as unknown as { _write: ChunkWriter })._write = (chunk, encoding, next) => {
      this.#chunk = chunk;
      this.#cursor = 0;
      if (this.#handedDone === null) {
        this.#handedLength = chunk.length;
        this.#handedDone = next;
        next = this.#handedDoneNow;
      }
      write.call(parser, chunk, encoding, next);
    };
  }

  /** The parser handed out a command line: the next one starts after its LF. */
  lineTaken(): void {
    const lf = this.#chunk.indexOf(0x0a, this.#cursor);
    this.#cursor = lf < 0 ? this.#chunk.length : lf + 1;
  }

  /** Input is here after the line last taken: in the same chunk, or in chunks waiting for the parser. */
  get more(): boolean {
    return this.#cursor < this.#chunk.length || this.#parser.writableLength > this.#handedLength;
  }
}
