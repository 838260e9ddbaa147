/**
 * The time a client has to send each line (a command, or a line of its message), as Exim's smtp_receive_timeout
 * and Postfix's smtpd_per_record_deadline: the idle timeout restarts with every byte, so a client that sent a byte
 * every few seconds kept its connection, and its slot under maxConnections and maxConnectionsPerIp, for ever.
 * A line not complete within the deadline expires it; a line that ends starts the next one's.
 */
const LF = 0x0a;

export class LineDeadline {
  readonly #ms: number;
  readonly #expired: () => void;
  #timer: NodeJS.Timeout | null = null;

  /** `expired`: a line began `ms` ago and has not ended. */
  constructor(ms: number, expired: () => void) {
    this.#ms = ms;
    this.#expired = expired;
  }

  /** Bytes from the client: a line that ends stops the clock; bytes after the last line end start it (once). */
  input(chunk: Buffer): void {
    const lf = chunk.lastIndexOf(LF);
    if (lf >= 0) this.stop();
    if (lf === chunk.length - 1 || this.#timer !== null) return;
    this.#timer = setTimeout(this.#fire, this.#ms);
  }

  /** The clock starts again from now, for the line still being received (the server kept the client waiting). */
  restart(): void {
    this.stop();
    this.#timer = setTimeout(this.#fire, this.#ms);
  }

  stop(): void {
    if (this.#timer === null) return;
    clearTimeout(this.#timer);
    this.#timer = null;
  }

  #fire = (): void => {
    this.#timer = null;
    this.#expired();
  };
}
