/**
 * A failure that comes back at every try while its cause lasts (a scan of the spool every few seconds at the open-file
 * limit, or with the disk gone): logged at error the first time, and again only when its kind changes; the repeats at
 * debug, counted; the first success after them once, with the count. One line per episode an administrator can find,
 * instead of thousands of the same one burying it.
 */
import type { Logger } from './logger.ts';

export class RepeatedFailure {
  readonly #log: Logger;
  readonly #failedMsg: string;
  readonly #recoveredMsg: string;
  #failures = 0;
  #kind: string | null = null;

  constructor(log: Logger, failedMsg: string, recoveredMsg: string) {
    this.#log = log;
    this.#failedMsg = failedMsg;
    this.#recoveredMsg = recoveredMsg;
  }

  /** `fields`: what else the line says (the session and message that failed). */
  failed(err: unknown, fields: Record<string, unknown> = {}): void {
    this.#failures++;
    // The errno code says the kind (EMFILE, EIO, ENOENT…); a message only where there is none.
    const kind = String((err as NodeJS.ErrnoException | null)?.code ?? (err as Error | null)?.message ?? err);
    if (kind === this.#kind) {
      this.#log.debug({ ...fields, err, failures: this.#failures }, `${this.#failedMsg} (again)`);
      return;
    }
    this.#kind = kind;
    // The message as it always was (alerts and log searches match it); the repeats are at debug until it works again.
    this.#log.error({ ...fields, err }, this.#failedMsg);
  }

  succeeded(): void {
    if (this.#failures === 0) return;
    this.#log.info({ failures: this.#failures }, `${this.#recoveredMsg} after ${this.#failures} failed`);
    this.#failures = 0;
    this.#kind = null;
  }
}
