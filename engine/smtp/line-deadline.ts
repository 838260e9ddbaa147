/**
 * The time a client has to send each line (a command, or a line of its message), as Exim's smtp_receive_timeout
 * and Postfix's smtpd_per_record_deadline: the idle timeout restarts with every byte, so a client that sent a byte
 * every few seconds kept its connection, and its slot under maxConnections and maxConnectionsPerIp, for ever.
 * A line not complete within the deadline expires it; a line that ends starts the next one's.
 *
 * The deadline is looked at in the check phase after its timer, once the poll phase has read what arrived: an event
 * loop that gets the CPU back late (a loaded machine) runs its timers before it reads its sockets, and a line whose
 * end had come in time, waiting there, was answered `421 Timeout`.
 */
import { deadlineAfterReads } from '../timing/deadline-after-reads.ts';

const LF = 0x0a;

export class LineDeadline {
  readonly #ms: number;
  readonly #expired: () => void;
  /** Cancels the running deadline (judged after the sockets are read: see above); null while none runs. */
  #cancel: (() => void) | null = null;
  /** Chunks received so far (the idle timeout asks whether the client sent anything since it looked). */
  chunks = 0;

  /** `expired`: a line began `ms` ago and has not ended. */
  constructor(ms: number, expired: () => void) {
    this.#ms = ms;
    this.#expired = expired;
  }

  /** Bytes from the client: a line that ends stops the clock; bytes after the last line end start it (once). */
  input(chunk: Buffer): void {
    this.chunks++;
    const lf = chunk.lastIndexOf(LF);
    if (lf >= 0) this.stop();
    if (lf === chunk.length - 1 || this.#cancel !== null) return;
    this.#start();
  }

  /** The clock starts again from now, for the line still being received (the server kept the client waiting). */
  restart(): void {
    this.stop();
    this.#start();
  }

  stop(): void {
    this.#cancel?.();
    this.#cancel = null;
  }

  #start(): void {
    this.#cancel = deadlineAfterReads(this.#ms, () => {
      // The deadline passed and, with what arrived read, the line has still not ended.
      this.#cancel = null;
      this.#expired();
    });
  }
}
