/**
 * Watches the inputs with chokidar and calls back once a burst of events has been quiet for `settleMs`.
 * Folders are watched (not only the files in them, and not their subfolders) so that write-temp-then-rename, delete-then-create and
 * an atomically swapped symlinked directory (Kubernetes ConfigMaps: `..data` → new folder) are all seen.
 */
import { watch, type FSWatcher } from 'chokidar';
import { dirname } from 'node:path';
import type { WatchedInputs } from './watched-inputs.ts';

export class ChangeWatcher {
  #watcher: FSWatcher | null = null;
  #timer: NodeJS.Timeout | null = null;
  #watching = new Set<string>();
  readonly #settleMs: number;
  readonly #onSettled: () => void;

  constructor(settleMs: number, onSettled: () => void) {
    this.#settleMs = settleMs;
    this.#onSettled = onSettled;
  }

  /** Watch these inputs (replacing what was watched before when the set changed). */
  async watch(inputs: WatchedInputs): Promise<void> {
    // The parent folders of files, and the script folders themselves (depth 1 for `..data/` style layouts).
    const targets = new Set([...inputs.files.map((f) => dirname(f)), ...inputs.folders]);
    if (this.#watcher && sameSet(targets, this.#watching)) return;
    await this.close();
    this.#watching = targets;
    const watcher = watch([...targets], {
      ignoreInitial: true,
      followSymlinks: true,
      depth: 0, // a swapped `..data` symlink is an event in the folder itself
      atomic: false, // we debounce ourselves; chokidar's atomic mode would delay and merge differently
      ignored: (path: string) => /(^|\/)(\.git|node_modules|spool|queue)(\/|$)/.test(path),
    });
    watcher.on('all', () => this.#poke());
    watcher.on('error', () => this.#poke());
    await new Promise<void>((resolve) => watcher.once('ready', () => resolve()));
    this.#watcher = watcher;
  }

  #poke(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#onSettled();
    }, this.#settleMs);
  }

  async close(): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    await this.#watcher?.close();
    this.#watcher = null;
  }
}

function sameSet(a: Set<string>, b: Set<string>): boolean {
  return a.size === b.size && [...a].every((x) => b.has(x));
}
