/**
 * Free space on the spool's filesystem, to refuse new mail while there is still room to record the
 * deliveries of the mail already accepted (Postfix queue_minfree). statfs runs at most once a second,
 * in the background; a check in between answers from the last look.
 */
import { statfs, statfsSync } from 'node:fs';

const INTERVAL_MS = 1000;

export class FreeSpace {
  readonly dir: string;
  #bytes = Number.POSITIVE_INFINITY;
  #checkedAt = Number.NEGATIVE_INFINITY;
  #checking = false;

  constructor(dir: string) { this.dir = dir; }

  /** Bytes available to this (unprivileged) process, as last seen. */
  get bytes(): number { return this.#bytes; }

  /** Look now: at start, so the first transaction already knows. */
  refreshSync(): void {
    const s = statfsSync(this.dir);
    this.#bytes = s.bavail * s.bsize;
    this.#checkedAt = Date.now();
  }

  /** Whether free space is below `floor` (0: no floor). */
  below(floor: number): boolean {
    if (floor <= 0) return false;
    if (!this.#checking && Date.now() - this.#checkedAt >= INTERVAL_MS) {
      this.#checking = true;
      statfs(this.dir, (err, s) => {
        this.#checking = false;
        this.#checkedAt = Date.now();
        if (!err) this.#bytes = s.bavail * s.bsize;
      });
    }
    return this.#bytes < floor;
  }
}
