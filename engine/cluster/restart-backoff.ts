/**
 * When to start a replacement for a child that died: at once the first time, then doubling delays while
 * it keeps dying young, so a process that crashes on start does not spin the machine.
 */
export const MIN_DELAY_MS = 100;
export const MAX_DELAY_MS = 10_000;
/** A child that lived this long counts as healthy: its next crash restarts at once again. */
export const HEALTHY_AFTER_MS = 10_000;

export class RestartBackoff {
  #quickDeaths = 0;

  /** The child died after living `livedMs`; returns how long to wait before replacing it. */
  died(livedMs: number): number {
    if (livedMs >= HEALTHY_AFTER_MS) this.#quickDeaths = 0;
    this.#quickDeaths++;
    if (this.#quickDeaths === 1) return 0;
    return Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** (this.#quickDeaths - 2));
  }
}
