/**
 * Room kept back on the spool's filesystem for the queue's bookkeeping: `<dataDir>/spool/reserve`, a file of
 * RESERVE_BYTES. When the disk is full, a message a next hop accepted cannot be marked done (a journal's done
 * line, a state file), and a journal segment is only deleted once all of its messages are: a spool that had
 * filled the disk itself (`spool.minFreeBytes: 0`, or a burst faster than the floor is checked) stayed full
 * for ever, every new message refused and everything delivered kept, to be delivered again at the next start.
 *
 * On such a failure the queue runner releases the reserve (cuts the file to nothing, which needs no room),
 * records what it could not, and the segments it finishes are deleted. While the file is empty every process
 * refuses new mail as below the spool's floor (free-space.ts), so the room goes to the bookkeeping; the
 * runner makes the reserve again once there is twice its size free above the floor.
 *
 * ENOSPC is also what a filesystem out of inodes says (ext4's count is fixed at mkfs). The reserve frees bytes,
 * not inodes: released then, it gave the bookkeeping nothing, refused new mail as "the disk is full" and could
 * not be made again (its new file needs an inode) until files were freed. So it is kept, and the log says inodes.
 */
import { statfsSync, statSync, truncateSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { acquireDirectoryLock, type DirectoryLock } from './data-dir-lock.ts';

export const RESERVE_BYTES = 4 * 1024 * 1024;

/** What a process reading the file sees: `absent` (never made: nothing refused), `kept`, or `released`. */
export type ReserveState = 'absent' | 'kept' | 'released';

export function reserveState(path: string): ReserveState {
  try {
    return statSync(path).size > 0 ? 'kept' : 'released';
  } catch {
    return 'absent';
  }
}

export class SpoolReserve {
  readonly path: string;
  readonly bytes: number;

  constructor(path: string, bytes = RESERVE_BYTES) {
    this.path = path;
    this.bytes = bytes;
  }

  get state(): ReserveState { return reserveState(this.path); }

  /**
   * Make the reserve when it is absent or released and `freeBytes` leaves twice its size above `floor`.
   * Random bytes, not zeros, which a compressing filesystem would not store. Written on the thread pool (a
   * slow disk must not hold the event loop). Resolves true when it was made now, false (after it is written)
   * when another call is making it.
   */
  keep(freeBytes: number, floor: number): Promise<boolean> {
    // One being made already: this call resolves once it is written too (the queue runner's close() awaits its
    // latest call, and a second one resolving at once let the test helpers remove the folder mid-write: ENOTEMPTY).
    if (this.#making) return this.#making.then(() => false, () => false);
    if (this.state === 'kept' || freeBytes < floor + 2 * this.bytes) return Promise.resolve(false);
    this.#making = this.#make().finally(() => { this.#making = null; });
    return this.#making;
  }

  #making: Promise<boolean> | null = null;

  async #make(): Promise<boolean> {
    const tmp = `${this.path}.new`;
    try {
      const handle = await open(tmp, 'w', 0o600);
      try {
        const chunk = randomBytes(256 * 1024);
        for (let at = 0; at < this.bytes;) at += (await handle.write(chunk, 0, Math.min(chunk.length, this.bytes - at))).bytesWritten;
        await handle.datasync();
      } finally {
        await handle.close();
      }
      await rename(tmp, this.path);
      return true;
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  /** Give the room back to the filesystem (the file stays, empty: the mark that it was used). True if it held any. */
  release(): boolean {
    if (this.state !== 'kept') return false;
    truncateSync(this.path, 0);
    return true;
  }

  /**
   * A write failed with ENOSPC or EDQUOT: release the reserve if its bytes can help. `inodes`: the filesystem is
   * out of inodes with bytes to spare, and the reserve is kept; `released`; `none`: none was kept to release.
   */
  useOnNoSpace(): 'inodes' | 'released' | 'none' {
    if (outOfInodes(dirname(this.path), this.bytes)) return 'inodes';
    return this.release() ? 'released' : 'none';
  }
}

/**
 * Whether `dir`'s filesystem has no inode free while it has at least `bytes` free (what the reserve would give):
 * an ENOSPC there is the inodes', and freeing bytes does not help it.
 */
export function outOfInodes(dir: string, bytes: number = RESERVE_BYTES): boolean {
  try {
    const fs = statfsSync(dir);
    return fs.files > 0 && fs.ffree === 0 && fs.bavail * fs.bsize >= bytes;
  } catch {
    return false;
  }
}

/** An ENOSPC of a filesystem out of inodes, said so: "no space left on device" reads as bytes. */
export function inodesError(err: NodeJS.ErrnoException, dir: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${err.message} (the filesystem of ${dir} is out of inodes, with bytes free: delete files on it; the spool's reserve frees bytes, not inodes)`), { code: err.code, syscall: err.syscall, path: err.path });
}

/** The filesystem is full (or the user's quota used up). */
export function isNoSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** The data folder's reserve file. */
export function reservePath(dataDir: string): string {
  return join(dataDir, 'spool', 'reserve');
}

/**
 * acquireDirectoryLock, also on a full disk: a process of `postern serve` replaced there (or the whole server
 * restarted) could not write its lock file, so the queue process that would free the disk by delivering never
 * came back. Then the reserve is released for it (`released` says so: log it) and the lock taken again.
 */
export function lockEvenWhenFull(dir: string, dataDir: string): { lock: DirectoryLock; released: boolean } {
  try {
    return { lock: acquireDirectoryLock(dir), released: false };
  } catch (err) {
    if (!isNoSpace(err)) throw err;
    const used = new SpoolReserve(reservePath(dataDir)).useOnNoSpace();
    if (used === 'inodes') throw inodesError(err as NodeJS.ErrnoException, dir);
    if (used === 'none') throw err;
    return { lock: acquireDirectoryLock(dir), released: true };
  }
}
