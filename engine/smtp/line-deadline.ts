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
const LF = 0x0a;

export class LineDeadline {
  readonly #ms: number;
  readonly #expired: () => void;
  #timer: NodeJS.Timeout | null = null;
  /** The look at an expired deadline, after the sockets are read (see above). */
  #look: NodeJS.Immediate | null = null;
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
    if (lf === chunk.length - 1 || this.#timer !== null || this.#look !== null) return;
    this.#timer = setTimeout(this.#fire, this.#ms);
  }

  /** The clock starts again from now, for the line still being received (the server kept the client waiting). */
  restart(): void {
    this.stop();
    this.#timer = setTimeout(this.#fire, this.#ms);
  }

  stop(): void {
    if (this.#look !== null) clearImmediate(this.#look);
    this.#look = null;
    if (this.#timer === null) return;
    clearTimeout(this.#timer);
    this.#timer = null;
  }

  #fire = (): void => {
    this.#timer = null;
    this.#look = setImmediate(this.#judge);
  };

  /** The deadline passed and, with what arrived read, the line has still not ended. */
  #judge = (): void => {
    this.#look = null;
    this.#expired();
  };
}
