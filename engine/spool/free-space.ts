/**
 * Free space on the spool's filesystem, to refuse new mail while there is still room to record the
 * deliveries of the mail already accepted (Postfix queue_minfree). statfs runs at most once a second,
 * in the background; a check in between answers from the last look. While the queue runner has used the
 * spool's reserve (reserve.ts: the disk filled up) the spool counts as below its floor, whatever the floor.
 * The second is measured on the monotonic clock: on the wall clock, a step back (NTP, a restored VM) stopped
 * the looking until the clock caught up, mail refused that long though the disk had room again.
 * Free inodes count too: a filesystem out of them (many small files beside the spool, ext4's fixed count) takes
 * journal records into segments that exist but no state file, journal done list or new segment, so deliveries
 * could not be recorded while new mail was still taken; and the reserve, which frees bytes, frees no inode.
 * A read-only filesystem (ext4's errors=remount-ro after an I/O or metadata error, or a remount) is looked at too,
 * by a write the filesystem must do (writable()): neither statfs (Node's has no f_flags, and ext4's emergency
 * read-only state sets no ST_RDONLY) nor access(W_OK) sees it, so every client sent its whole message for a 451.
 */
import { statfs, statfsSync, utimes, utimesSync } from 'node:fs';
import { reserveState } from './reserve.ts';

const INTERVAL_MS = 1000;

export class FreeSpace {
  readonly dir: string;
  /** `<dataDir>/spool/reserve` (null: not watched). */
  readonly #reserve: string | null;
  #bytes = Number.POSITIVE_INFINITY;
  #inodes = Number.POSITIVE_INFINITY;
  #reserveReleased = false;
  #readOnly = false;
  #checkedAt = Number.NEGATIVE_INFINITY;
  #checking = false;

  constructor(dir: string, reservePath: string | null = null) {
    this.dir = dir;
    this.#reserve = reservePath;
  }

  /** Told when the filesystem is seen to become read-only (true) or writable again (false): to log it once. */
  onReadOnly: ((readOnly: boolean) => void) | null = null;

  /** Whether the filesystem refused the last write probe as read-only (EROFS). */
  get readOnly(): boolean { return this.#readOnly; }

  #takeProbe(err: NodeJS.ErrnoException | null): void {
    const readOnly = err?.code === 'EROFS';
    if (readOnly === this.#readOnly) return;
    this.#readOnly = readOnly;
    this.onReadOnly?.(readOnly);
  }

  /** Bytes available to this (unprivileged) process, as last seen. */
  get bytes(): number { return this.#bytes; }

  /** Free inodes, as last seen (infinite on a filesystem without a fixed count, e.g. btrfs, which reports none). */
  get inodes(): number { return this.#inodes; }

  #take(s: { bavail: number; bsize: number; files: number; ffree: number }): void {
    this.#bytes = s.bavail * s.bsize;
    this.#inodes = s.files > 0 ? s.ffree : Number.POSITIVE_INFINITY;
  }

  /** Look now: at start, so the first transaction already knows. */
  refreshSync(): void {
    this.#take(statfsSync(this.dir));
    try { probeSync(this.dir); this.#takeProbe(null); } catch (err) { this.#takeProbe(err as NodeJS.ErrnoException); }
    this.#reserveReleased = this.#reserve !== null && reserveState(this.#reserve) === 'released';
    this.#checkedAt = performance.now();
  }

  /** Whether free space is below `floor` bytes or `inodeFloor` inodes (0: no floor), the spool's reserve is in use, or the filesystem is read-only. */
  below(floor: number, inodeFloor = 0): boolean {
    return this.short(floor, inodeFloor) !== null;
  }

  /** What is short: `readOnly` (the filesystem), `bytes` (below `floor`, or the reserve in use), `inodes` (below `inodeFloor`), or null. */
  short(floor: number, inodeFloor = 0): 'readOnly' | 'bytes' | 'inodes' | null {
    if (!this.#checking && performance.now() - this.#checkedAt >= INTERVAL_MS) {
      this.#checking = true;
      statfs(this.dir, (err, s) => {
        this.#checking = false;
        this.#checkedAt = performance.now();
        if (!err) this.#take(s);
        // One stat a second, beside the statfs: the hot path only reads the flag.
        this.#reserveReleased = this.#reserve !== null && reserveState(this.#reserve) === 'released';
        probe(this.dir, (probeErr) => this.#takeProbe(probeErr));
      });
    }
    if (this.#readOnly) return 'readOnly';
    if (this.#reserveReleased || (floor > 0 && this.#bytes < floor)) return 'bytes';
    return inodeFloor > 0 && this.#inodes < inodeFloor ? 'inodes' : null;
  }
}

/**
 * A write the filesystem itself must do, needing no free block or inode: the folder's times set (to now). EROFS
 * says read-only, for root too; other errors (the folder gone) are not this probe's to report.
 */
function probe(dir: string, done: (err: NodeJS.ErrnoException | null) => void): void {
  const now = new Date();
  utimes(dir, now, now, done);
}

function probeSync(dir: string): void {
  const now = new Date();
  utimesSync(dir, now, now);
}

/** Whether `dir`'s filesystem takes writes (false: read-only, EROFS), for /readyz. */
export async function writable(dir: string): Promise<boolean> {
  return new Promise((resolve) => probe(dir, (err) => resolve(err?.code !== 'EROFS')));
}
