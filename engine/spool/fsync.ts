/**
 * Directory fsync, coalesced: commits that arrive while a directory sync is running share the next one,
 * so N concurrent messages cost about two directory syncs, not N.
 */
import { open } from 'node:fs/promises';

export async function fsyncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export class DirectorySyncer {
  #running: Promise<void> | null = null;
  #next: Promise<void> | null = null;

  readonly dir: string;

  constructor(dir: string) { this.dir = dir; }

  /** Resolves after a directory sync that started after this call. */
  sync(): Promise<void> {
    if (!this.#running) {
      this.#running = fsyncDirectory(this.dir).finally(() => { this.#running = null; });
      return this.#running;
    }
    // A sync is in flight but may have started before our entry was written: wait for the next one.
    this.#next ??= this.#running.catch(() => undefined).then(() => {
      this.#next = null;
      return this.sync();
    });
    return this.#next;
  }
}
