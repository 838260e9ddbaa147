/**
 * Free space on the spool's filesystem, to refuse new mail while there is still room to record the
 * deliveries of the mail already accepted (Postfix queue_minfree). statfs runs at most once a second,
 * in the background; a check in between answers from the last look. While the queue runner has used the
 * spool's reserve (reserve.ts: the disk filled up) the spool counts as below its floor, whatever the floor.
 * The second is measured on the monotonic clock: on the wall clock, a step back (NTP, a restored VM) stopped
 * the looking until the clock caught up, mail refused that long though the disk had room again.
 */
import { statfs, statfsSync } from 'node:fs';
import { reserveState } from './reserve.ts';

const INTERVAL_MS = 1000;

export class FreeSpace {
  readonly dir: string;
  /** `<dataDir>/spool/reserve` (null: not watched). */
  readonly #reserve: string | null;
  #bytes = Number.POSITIVE_INFINITY;
  #reserveReleased = false;
  #checkedAt = Number.NEGATIVE_INFINITY;
  #checking = false;

  constructor(dir: string, reservePath: string | null = null) {
    this.dir = dir;
    this.#reserve = reservePath;
  }

  /** Bytes available to this (unprivileged) process, as last seen. */
  get bytes(): number { return this.#bytes; }

  /** Look now: at start, so the first transaction already knows. */
  refreshSync(): void {
    const s = statfsSync(this.dir);
    this.#bytes = s.bavail * s.bsize;
    this.#reserveReleased = this.#reserve !== null && reserveState(this.#reserve) === 'released';
    this.#checkedAt = performance.now();
  }

  /** Whether free space is below `floor` (0: no floor), or the spool's reserve is in use. */
  below(floor: number): boolean {
    if (floor <= 0 && this.#reserve === null) return false;
    if (!this.#checking && performance.now() - this.#checkedAt >= INTERVAL_MS) {
      this.#checking = true;
      statfs(this.dir, (err, s) => {
        this.#checking = false;
        this.#checkedAt = performance.now();
        if (!err) this.#bytes = s.bavail * s.bsize;
        // One stat a second, beside the statfs: the hot path only reads the flag.
        this.#reserveReleased = this.#reserve !== null && reserveState(this.#reserve) === 'released';
      });
    }
    return this.#reserveReleased || (floor > 0 && this.#bytes < floor);
  }
}
