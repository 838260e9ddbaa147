/**
 * How many devices an account may add (issue a certificate, register a key) per hour on the page. Each
 * addition reloads every process, grows the CA's records, the pin table and (once revoked) the CRL, and an
 * issued .p12 waits in memory for its download: without a bound, one signed-in user (or a stolen session)
 * could do that in a loop. Revoking and removing are not counted: they only undo additions, and a user who
 * lost a laptop must always be able to revoke it. On the monotonic clock (a wall-clock step changes nothing).
 */
const HOUR_MS = 3_600_000;

export class ChangeBudget {
  readonly #perHour: () => number;
  readonly #now: () => number;
  readonly #times = new Map<string, number[]>();

  constructor(perHour: () => number, now: () => number = () => performance.now()) {
    this.#perHour = perHour;
    this.#now = now;
  }

  /** Whether `account` may add a device now. */
  allows(account: string): boolean {
    this.#sweep(this.#now());
    return (this.#times.get(account)?.length ?? 0) < this.#perHour();
  }

  /** Counts one addition (made: a refused or failed one is not counted) for `account`. */
  count(account: string): void {
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
