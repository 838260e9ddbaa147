/**
 * How fast a message arrives, for a full listener (listener-room.ts): a message being received was never closed for
 * another client, so a client sending it a line just within socketTimeoutMs held its slot for up to dataTimeoutMs
 * (an hour by default), and a few addresses (or a botnet, one connection each) dripping messages held the whole
 * listener while every other client read `421 Too many connected clients`. Postfix shortens its timeouts under
 * stress and bounds each record (smtpd_per_record_deadline); here a full listener closes the slowest transfer
 * below limits.minDataRate over limits.dataRateWindowMs.
 *
 * Only bytes the server has read count, and the rate is asked for after the sockets were read (the newcomer's
 * judgement waits for the check phase, see PosternConnection.init): an event loop that got the CPU back late
 * finds the client's bytes waiting in the socket and reads them before judging, so it does not make the client
 * look slow. Samples are taken as bytes are read, at most four a window, so a transfer costs a few numbers.
 */
/** A transfer's rate as judged: bytes a second over the last `seconds`. */
export interface TransferJudgement { bytesPerSecond: number; seconds: number; minimum: number }

export class TransferRate {
  /**
   * (transfer time, message bytes by then), oldest first, on the connection's transfer clock: the time its messages
   * spent arriving (from each 354 to the last read of it), the time between them (its commands, our verdicts) left
   * out. Judged per message, a client dripping one message after another, each a little shorter than the window,
   * was never judged: one accepted message a window held its slot for ever.
   */
  readonly #at: number[] = [];
  readonly #bytes: number[] = [];
  /** Transfer time and bytes of the connection's earlier messages. */
  #doneMs = 0;
  #doneBytes = 0;
  /** The message under way: its start, the bytes read on the connection by then, and its last read (its end so far). */
  #since = 0;
  #sinceBytes = 0;
  #lastAt = 0;
  #lastBytes = 0;

  /** A message starts now, `bytes` read so far on the connection; the one before ended at its last read. */
  start(now: number, bytes: number): void {
    if (this.#at.length === 0) {
      this.#at.push(0);
      this.#bytes.push(0);
    } else {
      this.#doneMs += this.#lastAt - this.#since;
      this.#doneBytes += this.#lastBytes - this.#sinceBytes;
    }
    this.#since = this.#lastAt = now;
    this.#sinceBytes = this.#lastBytes = bytes;
  }

  /** Bytes of the message were read: `bytes` in all now on the connection. */
  read(now: number, bytes: number, windowMs: number): void {
    if (this.#at.length === 0) return;
    this.#lastAt = now;
    this.#lastBytes = bytes;
    const at = this.#clock(now);
    if (at - this.#at[this.#at.length - 1]! < windowMs / 4) return;
    this.#at.push(at);
    this.#bytes.push(this.#moved(bytes));
    // Samples older than the newest one that is a whole window old are never needed again.
    while (this.#at.length > 2 && at - this.#at[1]! >= windowMs) {
      this.#at.shift();
      this.#bytes.shift();
    }
  }

  /**
   * Bytes a second since the newest sample at least `windowMs` old on the transfer clock (a span of at least the
   * window), `bytes` read on the connection in all now; null while the connection's transfers are younger than it.
   */
  rate(now: number, bytes: number, windowMs: number): { bytesPerSecond: number; seconds: number } | null {
    const at = this.#clock(now);
    let from = -1;
    for (let i = this.#at.length - 1; i >= 0; i--) {
      if (at - this.#at[i]! >= windowMs) { from = i; break; }
    }
    if (from < 0) return null;
    const seconds = (at - this.#at[from]!) / 1000;
    return { bytesPerSecond: (this.#moved(bytes) - this.#bytes[from]!) / seconds, seconds };
  }

  #clock(now: number): number { return this.#doneMs + now - this.#since; }
  #moved(bytes: number): number { return this.#doneBytes + bytes - this.#sinceBytes; }
}
