/**
 * Whole-file writes (writeFileAtomic, engine/spool/fsync.ts) for files a running server rereads (CRL, pin
 * tables) or other processes read (the inventory, the sightings): the old file or the new one, never half of
 * one, and a revocation or an unpin that a command reported done survives a power loss.
 * And one writer at a time per folder: `postern pki` and a web page may change the same inventory.
 */
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { processAlive, removeLeftoverTemporaries, writeFileAtomic } from '../spool/fsync.ts';

export { writeFileAtomic };

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
 * Runs `fn` holding `<dir>/.lock` (created exclusively, holding our pid). A lock left by a process that is
 * gone is taken over; one held by a live process is waited for, up to 15 s, then an error names it.
 */
export async function withFolderLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  await mkdir(dir, { recursive: true });
  const lock = join(dir, '.lock');
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      const h = await open(lock, 'wx', 0o600);
      await h.writeFile(String(process.pid));
      await h.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(await readFile(lock, 'utf8').catch(() => ''));
      if (!holder || !processAlive(holder)) {
        // Empty: being written right now, or its writer died between open and write; old enough to judge.
        const age = await stat(lock).then((s) => Date.now() - s.mtimeMs, () => 0);
        if (holder || age > 2000) { await rm(lock, { force: true }); continue; }
      }
      if (Date.now() > deadline) throw new Error(`${lock}: held by process ${holder || '?'}; another postern pki/pins command is running`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    // What a writer killed here before left behind (a CA key's copy among them): no writer runs now.
    await removeLeftoverTemporaries(dir);
    return await fn();
  } finally {
    await rm(lock, { force: true });
  }
}
