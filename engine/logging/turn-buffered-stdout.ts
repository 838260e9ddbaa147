/**
 * stdout for the JSON log, written once per event-loop turn instead of once per line. A busy server logs
 * a line per accepted message and per refusal; one write(2) per line (or, with pino's async destination,
 * one thread-pool hop per line) cost more CPU than building the line. Lines of one turn go out together
 * with one synchronous write when the turn ends (setImmediate), at exit, or when the buffer fills.
 *
 * The pending bytes sit in shared memory, so a thread that outlives a stuck main thread (the cluster's
 * watchdog, see flushPendingLog) can still write them out before it kills the process: the lines that led
 * up to a hang are the ones an administrator needs most.
 *
 * A reader that stops reading (journald stalled, `postern serve | less` left paused) fills the pipe. The
 * main thread then never waits for it: what does not fit is kept (up to BACKLOG_BYTES) and tried again
 * every BACKLOG_RETRY_MS; past that, lines are dropped and counted, and their number logged once the reader
 * is back. Waiting there instead held the event loop (up to 10 s per write) until the watchdog killed the
 * process as hung: every session cut, again at each replacement, and no mail taken until the reader
 * read again. Only at exit is the reader waited for (a bounded time).
 */
import { writeSync } from 'node:fs';
import { envKnob } from '../config/env-knob.ts';

const HEADER_BYTES = 8; // Int32 length of the pending bytes, padded
const CAPACITY = 64 * 1024;
/**
 * Worker processes share the supervisor's stdout: a write of at most PIPE_BUF bytes to a pipe is never
 * interleaved with another process's, so whole lines go out in writes no larger than this.
 */
const ATOMIC_WRITE = 4096;
const NEWLINE = 0x0a;
const encoder = new TextEncoder();

/** What the main thread keeps while stdout is full, at most; beyond, lines are dropped (and counted). */
const BACKLOG_BYTES = envKnob('POSTERN_LOG_BACKLOG_BYTES', 16 * 1024 * 1024);
const BACKLOG_RETRY_MS = 20;

/**
 * Writes whole lines of `bytes` from `start`, at most ATOMIC_WRITE at a time, until done or stdout is full
 * (EAGAIN); returns where it stopped. A pipe takes a write of up to PIPE_BUF bytes whole or not at all, so
 * a line is never cut by a full pipe. Another error (a closed reader) drops the bytes, as writeAll does.
 */
function writeLinesUntilFull(fd: number, bytes: Uint8Array, start = 0): number {
  while (start < bytes.length) {
    let end = Math.min(bytes.length, start + ATOMIC_WRITE);
    if (end < bytes.length) {
      const lastNewline = bytes.lastIndexOf(NEWLINE, end - 1);
      end = lastNewline >= start ? lastNewline + 1 : bytes.indexOf(NEWLINE, end) + 1 || bytes.length;
    }
    try {
      start += writeSync(fd, bytes, start, end - start);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return start;
      return bytes.length;
    }
  }
  return start;
}

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
 * main thread, or by another thread once the main thread has stopped (it is then not writing). `wait:
 * false`: not for a full stdout (the watchdog, about to kill its process, must not be held up by it).
 */
export function flushPendingLog(shared: SharedArrayBuffer, fd = 1, wait = true): void {
  const length = new Int32Array(shared, 0, 1);
  const pending = Atomics.load(length, 0);
  if (pending === 0) return;
  // Copied out of shared memory: writeSync takes an ordinary buffer.
  const bytes = new Uint8Array(shared, HEADER_BYTES, pending).slice();
  Atomics.store(length, 0, 0);
  if (!wait) writeLinesUntilFull(fd, bytes); // a full stdout: what does not fit is lost, nothing waits
  else writeWholeLines(fd, bytes);
}

/**
 * Writes `bytes` completely as writeAll does, but whole lines at most ATOMIC_WRITE at a time: one larger write to a
 * pipe is taken in pieces once it is full, and another process's lines land between them.
 */
function writeWholeLines(fd: number, bytes: Uint8Array): void {
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
  /** Lines stdout had no room for, oldest first (the first may be partly written: #backlogAt). */
  #backlog: Uint8Array[] = [];
  #backlogAt = 0;
  #backlogBytes = 0;
  #retry: NodeJS.Timeout | null = null;
  /** Lines dropped since stdout was last writable, beyond BACKLOG_BYTES. */
  #dropped = 0;

  constructor(fd = 1) {
    this.#fd = fd;
    process.on('exit', () => this.#flushAtExit());
  }

  /** pino's destination interface: one serialised line (with its newline). */
  write(line: string): boolean {
    if (!this.#append(line)) {
      this.flushSync();
      if (!this.#append(line)) this.#writeOrKeep(encoder.encode(line)); // larger than the whole buffer
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

  /** Writes what is pending now, without waiting for a full stdout (see the top of this file). */
  flushSync(): void {
    const pending = Atomics.load(this.#length, 0);
    if (pending === 0) return;
    const bytes = new Uint8Array(this.shared, HEADER_BYTES, pending).slice();
    Atomics.store(this.#length, 0, 0);
    this.#writeOrKeep(bytes);
  }

  /** pino's logger.flush(cb). */
  flush(cb?: (err?: Error) => void): void {
    this.flushSync();
    cb?.();
  }

  #writeOrKeep(bytes: Uint8Array): void {
    if (this.#backlog.length === 0) {
      const at = writeLinesUntilFull(this.#fd, bytes);
      if (at === bytes.length) return;
      bytes = bytes.subarray(at);
    }
    if (this.#backlogBytes + bytes.length > BACKLOG_BYTES) {
      let lines = 0;
      for (const b of bytes) if (b === NEWLINE) lines++;
      this.#dropped += Math.max(1, lines);
    } else {
      this.#backlog.push(bytes);
      this.#backlogBytes += bytes.length;
    }
    this.#retryLater();
  }

  /** Unref'd: at a natural exit, #flushAtExit writes what is left. */
  #retryLater(): void {
    this.#retry ??= setTimeout(() => {
      this.#retry = null;
      this.#drain();
    }, BACKLOG_RETRY_MS).unref();
  }

  #drain(): void {
    while (this.#backlog.length) {
      const first = this.#backlog[0]!;
      const at = writeLinesUntilFull(this.#fd, first, this.#backlogAt);
      if (at < first.length) {
        this.#backlogAt = at;
        this.#retryLater();
        return;
      }
      this.#backlog.shift();
      this.#backlogBytes -= first.length;
      this.#backlogAt = 0;
    }
    if (this.#dropped) {
      const dropped = this.#dropped;
      this.#dropped = 0;
      this.#writeOrKeep(encoder.encode(`${JSON.stringify({ level: 40, time: new Date().toISOString(), pid: process.pid, dropped, msg: `${dropped} log lines dropped: stdout was not read (a stalled log reader)` })}\n`));
    }
  }

  /** At exit the reader is waited for (writeAll's bound): nothing else is left to do. */
  #flushAtExit(): void {
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
    // Line by line as ever (the other processes still write): held lines came out cut by theirs at a stop or crash.
    for (const [i, b] of this.#backlog.entries()) writeWholeLines(this.#fd, b.subarray(i === 0 ? this.#backlogAt : 0));
    this.#backlog = [];
    this.#backlogBytes = 0;
    flushPendingLog(this.shared, this.#fd);
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
