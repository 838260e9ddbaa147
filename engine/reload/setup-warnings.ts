/**
 * The warnings of the configuration in force (a certificate that expires soon, Redis evicting keys, a stray file in a
 * scripts folder, …), said when they are new rather than at every build. Every reload (a watched edit, SIGHUP, a
 * renewed certificate, a `postern pki` change), and under `postern serve` every process, logged each of them again: a
 * site reloading every few minutes logged the same lines hundreds of times a day, which buried the one that was new.
 *
 * A warning is said when it first holds, and again whenever its text changes (its facts: "expires in 13 days" the next
 * day, another file, another listener). One that still holds is said again once it was last said a day ago or more
 * (at the next build after that): a daily log review, and an alert on log lines over a day, still meet it while it
 * holds. A warning that stops holding is forgotten, and said again if it comes back. `postern status` shows those in
 * force. Days are counted on the monotonic clock: a step of the wall clock neither silences nor repeats one.
 */
import type { GenerationWarning } from '../generation/build-generation.ts';

/** A warning that still holds is said again once this long has passed since it was last said. */
export const REPEAT_AFTER_MS = 24 * 3600_000;

const keyOf = (w: GenerationWarning): string => `${w.listener ?? ''}\n${w.message}`;

export class SetupWarnings {
  /** Each warning in force, and when it was last said (the clock's ms). */
  #said = new Map<string, number>();
  #inForce: GenerationWarning[] = [];
  readonly #now: () => number;

  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /** The warnings in force, each once. */
  get inForce(): readonly GenerationWarning[] { return this.#inForce; }

  /** `warnings` are now in force: those to say now (new, changed, or last said a day ago or more), each once. */
  took(warnings: readonly GenerationWarning[]): GenerationWarning[] {
    const now = this.#now();
    const said = new Map<string, number>();
    const inForce: GenerationWarning[] = [];
    const say: GenerationWarning[] = [];
    for (const w of warnings) {
      const key = keyOf(w);
      if (said.has(key)) continue;
      inForce.push(w);
      const last = this.#said.get(key);
      if (last === undefined || now - last >= REPEAT_AFTER_MS) {
        say.push(w);
        said.set(key, now);
      } else said.set(key, last);
    }
    this.#said = said;
    this.#inForce = inForce;
    return say;
  }
}
