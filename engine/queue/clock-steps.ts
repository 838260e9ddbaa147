/**
 * Forward steps of the wall clock seen while the queue process runs, so that a message's age leaves them out.
 * A message expires (delivery.maxAgeHours) by the wall clock, which is all that survives a restart; but a step
 * forward (an NTP server gone wrong, a typo) made every deferred message that old at once, and each bounced
 * at its next attempt. Steps are told from the monotonic clock, which steps do not move: the wall clock's lead
 * over it changes by the step. A slew (NTP's normal correction) stays below STEP_MS between two looks, and a
 * step back needs nothing (messages only live longer by it). A machine's sleep (a suspend, during which the
 * monotonic clock stands still) counts as a step as well: no attempt was made in it.
 */

/** A change of the wall clock's lead over the monotonic one, between two looks, that counts as a step. */
const STEP_MS = 60_000;
/** Steps remembered (the oldest are forgotten: messages from before them have long expired or gone). */
const MAX_STEPS = 100;

export interface ClockStep {
  /** Wall-clock time just after the step. */
  after: number;
  /** How far forward (ms). */
  ms: number;
}

export class ClockSteps {
  readonly #wall: () => number;
  readonly #monotonic: () => number;
  #lead: number;
  readonly #steps: ClockStep[] = [];

  constructor(wall: () => number = Date.now, monotonic: () => number = () => performance.now()) {
    this.#wall = wall;
    this.#monotonic = monotonic;
    this.#lead = wall() - monotonic();
  }

  /** Look at the clocks now; a step forward since the last look is returned (and remembered), else null. */
  observe(): ClockStep | null {
    const lead = this.#wall() - this.#monotonic();
    const change = lead - this.#lead;
    this.#lead = lead;
    if (Math.abs(change) < STEP_MS) return null; // a slew: the wall clock's own correction
    if (change < 0) {
      // Back: the steps forward it undoes are no longer ahead of the clock.
      let back = -change;
      while (back > 0 && this.#steps.length) {
        const last = this.#steps[this.#steps.length - 1]!;
        const undone = Math.min(back, last.ms);
        last.ms -= undone;
        back -= undone;
        if (last.ms === 0) this.#steps.pop();
      }
      return null;
    }
    const step = { after: this.#wall(), ms: change };
    this.#steps.push(step);
    if (this.#steps.length > MAX_STEPS) this.#steps.shift();
    return step;
  }

  /** Wall-clock milliseconds from `since` to now, less the steps forward made in between. */
  elapsedSince(since: number, now = this.#wall()): number {
    let skipped = 0;
    for (const s of this.#steps) if (s.after > since) skipped += Math.min(s.ms, s.after - since);
    return now - since - skipped;
  }
}
