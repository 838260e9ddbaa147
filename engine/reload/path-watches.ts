/**
 * fs.watch on folders (their entries, not their subfolders) and on single files, every raw event passed on as it
 * comes: which entry (or the watched file itself), and whether it was a `change` or a `rename`.
 *
 * chokidar did this before, and read the whole folder again (readdir, then lstat of every entry) at each event in
 * it, whatever file the event was about: a log file written beside postern.yaml 100 times a second cost the
 * supervisor 50–130 ms of CPU a second against ~15 idle (measured 2026-12-07; chokidar 5 has no option against
 * it). The change watcher judges the raw events itself (change-watcher.ts), so it needs nothing more than these.
 */
import { watch, type FSWatcher } from 'node:fs';

/** `name`: the entry of a watched folder, or the watched file's own name; null when the system did not say. */
export type RawEvent = (event: string, name: string | null, watchedPath: string) => void;

/** A path gone (or never there): no watch, and no error; the caller looks again when it may have come back. */
const GONE = new Set(['ENOENT', 'ENOTDIR']);

export class PathWatches {
  readonly #watches = new Map<string, FSWatcher>();
  readonly #onRaw: RawEvent;
  readonly #onError: (err: NodeJS.ErrnoException, path: string) => void;

  /** `onError`: a watch that could not be set or broke for another reason than its path being gone (EMFILE, ENOSPC, EACCES). */
  constructor(onRaw: RawEvent, onError: (err: NodeJS.ErrnoException, path: string) => void) {
    this.#onRaw = onRaw;
    this.#onError = onError;
  }

  /** Watch `path` (a symlink is followed, as the file system reports for what it leads to); already watched: nothing. */
  add(path: string): void {
    if (!this.#watches.has(path)) this.#set(path);
  }

  /** Watch `path` afresh: it may lead to another file than the one watched (renamed over, a symlink changed). */
  renew(path: string): void {
    this.#drop(path);
    this.#set(path);
  }

  /** Stop watching every path not in `keep`. */
  keepOnly(keep: ReadonlySet<string>): void {
    for (const path of [...this.#watches.keys()]) if (!keep.has(path)) this.#drop(path);
  }

  close(): void {
    for (const path of [...this.#watches.keys()]) this.#drop(path);
  }

  #set(path: string): void {
    let watcher: FSWatcher;
    try {
      watcher = watch(path, (event, name) => this.#onRaw(event, name, path));
    } catch (err) {
      if (!GONE.has((err as NodeJS.ErrnoException).code ?? '')) this.#onError(err as NodeJS.ErrnoException, path);
      return;
    }
    watcher.on('error', (err: NodeJS.ErrnoException) => {
      if (this.#watches.get(path) === watcher) this.#drop(path);
      if (!GONE.has(err.code ?? '')) this.#onError(err, path);
    });
    this.#watches.set(path, watcher);
  }

  #drop(path: string): void {
    const watcher = this.#watches.get(path);
    this.#watches.delete(path);
    watcher?.close();
  }
}
