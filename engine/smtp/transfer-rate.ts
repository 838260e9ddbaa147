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
  /** (time, bytes read by then), oldest first; the first is the transfer's start. */
  readonly #at: number[] = [];
  readonly #bytes: number[] = [];

  /** The transfer starts now, `bytes` read so far on the connection. */
  start(now: number, bytes: number): void {
    this.#at.length = 0; // the connection's arrays serve each of its messages
    this.#bytes.length = 0;
    this.#at.push(now);
    this.#bytes.push(bytes);
  }

  /** Bytes were read: `bytes` in all now. */
  read(now: number, bytes: number, windowMs: number): void {
    const n = this.#at.length;
    if (n === 0 || now - this.#at[n - 1]! < windowMs / 4) return;
    this.#at.push(now);
    this.#bytes.push(bytes);
    // Samples older than the newest one that is a whole window old are never needed again.
    while (this.#at.length > 2 && now - this.#at[1]! >= windowMs) {
      this.#at.shift();
      this.#bytes.shift();
    }
  }

  /**
   * Bytes a second since the newest sample at least `windowMs` old (a span of at least the window), `bytes` read
   * in all now; null while the transfer is younger than the window.
   */
  rate(now: number, bytes: number, windowMs: number): { bytesPerSecond: number; seconds: number } | null {
    let from = -1;
    for (let i = this.#at.length - 1; i >= 0; i--) {
      if (now - this.#at[i]! >= windowMs) { from = i; break; }
    }
    if (from < 0) return null;
    const seconds = (now - this.#at[from]!) / 1000;
    return { bytesPerSecond: (bytes - this.#bytes[from]!) / seconds, seconds };
  }
}
