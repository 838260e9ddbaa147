/**
 * stdout for the JSON log, written once per event-loop turn instead of once per line. A busy server logs
 * a line per accepted message and per refusal; one write(2) per line (or, with pino's async destination,
 * one thread-pool hop per line) cost more CPU than building the line. Lines of one turn go out together
 * with one synchronous write when the turn ends (setImmediate), at exit, or when the buffer fills.
 *
 * The pending bytes sit in shared memory, so a thread that outlives a stuck main thread (the cluster's
 * watchdog, see flushPendingLog) can still write them out before it kills the process: the lines that led
 * up to a hang are the ones an administrator needs most.
 */
import { writeSync } from 'node:fs';

const HEADER_BYTES = 8; // Int32 length of the pending bytes, padded
const CAPACITY = 64 * 1024;
/**
 * Worker processes share the supervisor's stdout: a write of at most PIPE_BUF bytes to a pipe is never
 * interleaved with another process's, so whole lines go out in writes no larger than this.
 */
const ATOMIC_WRITE = 4096;
const NEWLINE = 0x0a;
const encoder = new TextEncoder();

/** Writes `bytes` to `fd` completely, waiting out EAGAIN on a non-blocking pipe or socket. */
function writeAll(fd: number, bytes: Uint8Array): void {
  let off = 0;
  let waits = 0;
  while (off < bytes.length) {
    try {
      off += writeSync(fd, bytes, off, bytes.length - off);
    } catch (err) {
      // A reader that stays full for ~10 s: give the lines up rather than stop the server for ever.
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN' || ++waits > 10_000) return;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
  }
}

/**
 * Writes what is pending in a TurnBufferedStdout's shared buffer and empties it. Called by the owning
 * main thread, or by another thread once the main thread has stopped (it is then not writing).
 */
export function flushPendingLog(shared: SharedArrayBuffer, fd = 1): void {
  const length = new Int32Array(shared, 0, 1);
  const pending = Atomics.load(length, 0);
  if (pending === 0) return;
  // Copied out of shared memory: writeSync takes an ordinary buffer.
  const bytes = new Uint8Array(shared, HEADER_BYTES, pending).slice();
  Atomics.store(length, 0, 0);
  for (let start = 0; start < bytes.length;) {
    let end = Math.min(bytes.length, start + ATOMIC_WRITE);
    if (end < bytes.length) {
      const lastNewline = bytes.lastIndexOf(NEWLINE, end - 1);
      // Whole lines only; a line longer than ATOMIC_WRITE goes alone (it could not be atomic anyway).
      end = lastNewline >= start ? lastNewline + 1 : bytes.indexOf(NEWLINE, end) + 1 || bytes.length;
    }
    writeAll(fd, bytes.subarray(start, end));
    start = end;
  }
}

export class TurnBufferedStdout {
  /** Length (Int32 at 0) and bytes (from HEADER_BYTES) of the lines not yet written. */
  readonly shared = new SharedArrayBuffer(HEADER_BYTES + CAPACITY);
  readonly #length = new Int32Array(this.shared, 0, 1);
  readonly #bytes = new Uint8Array(this.shared, HEADER_BYTES);
  readonly #fd: number;
  #scheduled = false;

  constructor(fd = 1) {
    this.#fd = fd;
    process.on('exit', () => this.flushSync());
  }

  /** pino's destination interface: one serialised line (with its newline). */
  write(line: string): boolean {
    if (!this.#append(line)) {
      this.flushSync();
      if (!this.#append(line)) writeAll(this.#fd, encoder.encode(line)); // larger than the whole buffer
    }
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => {
        this.#scheduled = false;
        this.flushSync();
      });
    }
    return true;
  }

  flushSync(): void {
    flushPendingLog(this.shared, this.#fd);
  }

  /** pino's logger.flush(cb). */
  flush(cb?: (err?: Error) => void): void {
    this.flushSync();
    cb?.();
  }

  #append(line: string): boolean {
    const used = this.#length[0]!;
    const { read, written } = encoder.encodeInto(line, this.#bytes.subarray(used));
    if (read < line.length) return false; // did not fit: the partial copy is ignored (length unchanged)
    Atomics.store(this.#length, 0, used + written);
    return true;
  }
}

let stdout: TurnBufferedStdout | undefined;

/** The process's one buffered stdout (the logger writes through it; the watchdog flushes its buffer). */
export function turnBufferedStdout(): TurnBufferedStdout {
  return (stdout ??= new TurnBufferedStdout(1));
}
