/**
 * Whole-file writes (writeFileAtomic, engine/spool/fsync.ts) for files a running server rereads (CRL, pin
 * tables) or other processes read (the inventory, the sightings): the old file or the new one, never half of
 * one, and a revocation or an unpin that a command reported done survives a power loss.
 * And one writer at a time per folder: `postern pki` and a web page may change the same inventory.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { makeFolderLikeParent, removeLeftoverTemporaries, writeFileAtomic } from '../spool/fsync.ts';
import { acquireDirectoryLock, DirectoryLockedError, type DirectoryLock } from '../spool/data-dir-lock.ts';
import { envKnob } from '../config/env-knob.ts';

export { makeFolderLikeParent, writeFileAtomic };

/** A file's text, or null when it does not exist. */
export async function readIfExists(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

const LOCK_WAIT_MS = 15_000;
/**
 * LOCK_WAIT_MS, or POSTERN_FOLDER_LOCK_WAIT_MS when set (read at each wait: a test in the server's own process sets it
 * for the one test that must see a wait given up, rather than wait out 15 s).
 */
const lockWaitMs = (): number => envKnob('POSTERN_FOLDER_LOCK_WAIT_MS', LOCK_WAIT_MS);

/**
 * Called once the lock is held, before anything is changed: it throws to change nothing. The reasons for a change
 * are checked here, not before the wait (up to 15 s), which they may not outlive (an account page session ended).
 */
export type WhenLocked = () => void;

/**
 * Runs `fn` holding `<dir>/.lock` (data-dir-lock.ts: it names our PID and start time). A lock left by a
 * process that is gone (killed, a power loss; a PID reused since by another process does not count) is taken
 * over; one held by a live process, this one included, is waited for, up to 15 s, then an error names it.
 */
export async function withFolderLock<T>(dir: string, fn: () => Promise<T>, whenLocked?: WhenLocked): Promise<T> {
  await mkdir(dir, { recursive: true });
  // Monotonic: a step of the wall clock ended the wait at once (forward) or stretched it by the step (back).
  const deadline = performance.now() + lockWaitMs();
  let lock: DirectoryLock;
  for (;;) {
    try {
      lock = acquireDirectoryLock(dir, '.lock');
      break;
    } catch (err) {
      if (!(err instanceof DirectoryLockedError)) throw err;
      if (performance.now() > deadline) throw new Error(`${err.lockFile}: held by process ${err.pid}; another postern pki/pins command is running`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    whenLocked?.();
    // What a writer killed here before left behind (a CA key's copy among them): no writer runs now.
    await removeLeftoverTemporaries(dir);
    return await fn();
  } finally {
    lock.release();
  }
}
