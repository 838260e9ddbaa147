/**
 * Time limits on what a next hop sends, per reply. nodemailer's socketTimeout counts time without any byte:
 * a next hop that sends a byte now and then (a reply line that never ends, continuation lines forever) or
 * reads the message a few bytes at a time kept the delivery, and a slot of `delivery.concurrency`, for
 * ever; a handful of such hosts (any domain's MX) starved every other delivery. Here each reply must be
 * complete within `replyMs` of the moment it is awaited (Postfix's smtp_per_record_deadline), and the
 * message itself must be taken at BODY_BYTES_PER_MS at least (beyond `replyMs`).
 *
 * nodemailer tells of each command sent and reply read through its transaction log (the `logger` option
 * with `transactionLog`), which is what this listens to.
 *
 * These limits, nodemailer's socket timeout and its connect, greeting and STARTTLS phase limits (connectTimeoutMs)
 * are looked at in the check phase after their timer, once the poll phase has read what arrived: a queue process
 * that gets the CPU back late (a loaded machine) runs its timers before it reads its sockets, and a reply that had
 * come in time, waiting there, failed the connection with ETIMEDOUT (a delivery deferred; one whose message had gone
 * out perhaps made twice).
 */
import type SMTPConnection from 'nodemailer/lib/smtp-connection';
import { deadlineAfterReads } from '../timing/deadline-after-reads.ts';
import { idleAfterReads } from '../timing/idle-after-reads.ts';

/** The slowest a next hop may take the message: 1 byte per millisecond, about 1 MB per 17 minutes. */
const BODY_BYTES_PER_MS = 1;

interface Internals {
  /** Replies awaited, one action each. */
  _responseActions: unknown[];
  /** nodemailer's own timeout: fails the command under way with ETIMEDOUT and closes. */
  _onTimeout(): void;
  /** Bytes from the next hop (its socket's 'data' listener calls it). */
  _onData(chunk: Buffer): void;
  /** The connect, greeting and STARTTLS phases' time limit: `err` (ETIMEDOUT) after `timeout` ms unless cleared. */
  _startPhase(timeout: number, err: Error): void;
  _clearPhase(): void;
  _onError(err: Error, code: string, response: unknown, command: string): void;
}

type LogFn = (meta?: unknown, ...rest: unknown[]) => void;

export class ReplyDeadline {
  readonly #replyMs: number;
  /**
   * For the reply to the final dot (RFC 5321 §4.5.3.2.6: 10 minutes): the next hop may scan the message before it
   * answers, and giving up sooner leaves it the message while the retry sends it again.
   */
  readonly #verdictMs: number;
  /** The final dot is out and its reply not read: nodemailer's idle timeout (commandTimeoutMs) does not apply. */
  #awaitingVerdict = false;
  #conn: (SMTPConnection & Internals) | null = null;
  /** nodemailer's own _onTimeout (the connection's is replaced by one that looks after the reads: attach). */
  #fail: () => void = () => undefined;
  /** Cancels the reply deadline running (judged after the sockets are read); null while none runs. */
  #cancel: (() => void) | null = null;
  /** While the message is being sent: its replies wait for its end (see bodyStarted). */
  #inBody = false;
  /** nodemailer's `logger` option (with `transactionLog: true`). */
  readonly logger: Record<'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal', LogFn>;

  constructor(replyMs: number, verdictMs = replyMs) {
    this.#replyMs = replyMs;
    this.#verdictMs = verdictMs;
    const nothing: LogFn = () => undefined;
    this.logger = {
      trace: nothing, info: nothing, warn: nothing, error: nothing, fatal: nothing,
      debug: (meta) => {
        const tnx = (meta as { tnx?: string } | undefined)?.tnx;
        if (tnx === 'client') this.#commandSent();
        else if (tnx === 'server') this.#replyRead();
      },
    };
  }

  /** The connection whose replies are timed (before it connects). */
  attach(conn: SMTPConnection): void {
    const c = conn as SMTPConnection & Internals;
    this.#conn = c;
    this.#fail = c._onTimeout.bind(c);
    // nodemailer's socket timeout (no byte for commandTimeoutMs) fires only if, with what arrived read, no byte came
    // since; else the socket's timer, restarted by those bytes, fires again later.
    let chunks = 0;
    const onData = c._onData.bind(c);
    c._onData = (chunk) => { chunks++; onData(chunk); };
    c._onTimeout = () => idleAfterReads(() => chunks, () => { if (!this.#awaitingVerdict) this.#fail(); }, () => undefined);
    // The connect, greeting and STARTTLS phases too: a phase the poll phase ended (the greeting read) is cleared
    // before the look at its limit.
    let cancelPhase = (): void => undefined;
    c._clearPhase = () => cancelPhase();
    c._startPhase = (timeout, err) => {
      c._clearPhase();
      cancelPhase = deadlineAfterReads(timeout, () => c._onError(err, 'ETIMEDOUT', false, 'CONN'));
    };
    const stop = (): void => this.#disarm();
    conn.once('end', stop);
    conn.once('error', stop);
  }

  /** The message (`bytes`) starts going out after 354: it, and then its reply, get their own limit. */
  bodyStarted(bytes: number): void {
    this.#inBody = true;
    this.#arm(this.#replyMs + Math.ceil(bytes / BODY_BYTES_PER_MS));
  }

  /** The whole message, to its final dot, went to the socket: its reply is awaited. */
  bodyEnded(): void {
    this.#inBody = false;
    this.#awaitingVerdict = true;
    this.#arm(this.#verdictMs);
  }

  #commandSent(): void {
    if (!this.#cancel && !this.#inBody) this.#arm(this.#replyMs);
  }

  /** A reply is complete (logged before its action runs, which may send the next command). */
  #replyRead(): void {
    if (this.#inBody) return;
    this.#awaitingVerdict = false;
    if ((this.#conn?._responseActions.length ?? 0) > 1) this.#arm(this.#replyMs); // pipelined: the next reply's turn
    else this.#disarm();
  }

  #arm(ms: number): void {
    this.#disarm();
    // Unless a reply read meanwhile disarmed (or armed again) the deadline. (commandTimeoutMs plus the message's
    // bytes may be past a timer's reach: deadlineAfterReads bounds it, or it fired after 1 ms.)
    this.#cancel = deadlineAfterReads(ms, () => { this.#cancel = null; this.#fail(); }, { unref: true });
  }

  #disarm(): void {
    this.#cancel?.();
    this.#cancel = null;
  }
}
