/**
 * How many devices an account may add (issue a certificate, register a key) per hour on the page. Each
 * addition reloads every process, grows the CA's records, the pin table and (once revoked) the CRL, and an
 * issued .p12 waits in memory for its download: without a bound, one signed-in user (or a stolen session)
 * could do that in a loop. Revoking and removing are not counted: they only undo additions, and a user who
 * lost a laptop must always be able to revoke it. On the monotonic clock (a wall-clock step changes nothing).
 *
 * One account's additions run one at a time: the budget's check and count, and the addition's own checks
 * (a device name the account already uses) and write, are one step. Side by side, requests sent in parallel
 * all passed the check before any was counted or written (25 devices of a budget of 20, ten named "laptop").
 */
const HOUR_MS = 3_600_000;

export class ChangeBudget {
  readonly #perHour: () => number;
  readonly #now: () => number;
  readonly #times = new Map<string, number[]>();
  /** Per account, the end of the addition running now. */
  readonly #running = new Map<string, Promise<void>>();

  constructor(perHour: () => number, now: () => number = () => performance.now()) {
    this.#perHour = perHour;
    this.#now = now;
  }

  /**
   * Runs `addition` for `account` once its earlier ones have ended, if the budget allows one more: its
   * result (counted), or null when the budget is used up (nothing run). A failed addition is not counted.
   */
  add<T extends object>(account: string, addition: () => Promise<T>): Promise<T | null> {
    const run = (this.#running.get(account) ?? Promise.resolve()).then(async () => {
      if (!this.#allows(account)) return null;
      const added = await addition();
      this.#count(account);
      return added;
    });
    const done = run.then(() => undefined, () => undefined);
    this.#running.set(account, done);
    void done.then(() => { if (this.#running.get(account) === done) this.#running.delete(account); });
    return run;
  }

  #allows(account: string): boolean {
    this.#sweep(this.#now());
    return (this.#times.get(account)?.length ?? 0) < this.#perHour();
  }

  #count(account: string): void {
    const times = this.#times.get(account) ?? [];
    times.push(this.#now());
    this.#times.set(account, times);
  }

  #sweep(now: number): void {
    for (const [account, times] of this.#times) {
      while (times.length && now - times[0]! >= HOUR_MS) times.shift();
      if (!times.length) this.#times.delete(account);
    }
  }
}
