/**
 * Watches the inputs (fs.watch, path-watches.ts) and calls back once events about them have been quiet for `settleMs`.
 *
 * Folders are watched (not only the files in them, and not their subfolders) so that write-temp-then-rename,
 * delete-then-create and an atomically swapped symlinked directory (Kubernetes ConfigMaps: `..data` → new
 * folder) are all seen; each input file and script is watched as well (a symlink to a file elsewhere is edited
 * where no watched folder sees it). Only events about inputs count: other files in those folders (a log file next
 * to postern.yaml) neither start nor prolong a settle period, and cost no more than the event itself.
 *
 * No event is dropped: every raw file-system event about an input (re)starts the settle period. A `change` that
 * altered nothing but the access time (a read, such as the reloader's own) is recognised by an unchanged status
 * change time and ignored.
 *
 * A scripts folder can itself be replaced (deleted and created again by a deploy, or a `scripts` symlink
 * renamed over to point elsewhere), and so can the folder of postern.yaml or of a table (a release-style deploy
 * swapping `/etc/postern` as a whole): a watch stays on the folder it was set on, so the swap and later edits in
 * the new one would go unseen. An event about a scripts folder itself, or a change of what a watched folder's
 * path leads to (checked every second: a folder created again is not always reported, and a swapped parent is
 * not in a watched folder), sets the watch up afresh, then looks at the inputs again (an edit made before the
 * new watch was ready counts).
 *
 * Events do not always come. Watching can be impossible: a host whose inotify instances or watches are used up
 * (fs.watch fails with EMFILE or ENOSPC: no watch is set, path-watches.ts says why). And some file systems never report
 * a change (overlayfs whose lower layer is changed, FUSE, NFS, a VM's shared folder): a watch is set, and nothing
 * comes. Either way every later edit went unseen without a word. So the inputs' status (inode, size, times) is
 * also compared every second: a change found so is acted on, and when no event came for it (or a watch failed),
 * `unavailable` says why and `onUnavailable` is told once (to log it).
 *
 * A file being written in place is a valid file at every moment: `generator > blocked.txt` empties it at once and
 * fills it seconds later, and `scp` or a script writing line by line pause between parts. A 50 ms quiet period
 * would take the empty or half table as the new generation (an empty blocklist lets spam through, an empty users
 * file locks every login out). So an input that shrank since the content last let through (a file or script cut
 * short in place, emptied or gone) must be seen unchanged for SHRUNK_SETTLE_MS before the change is let through;
 * every event meanwhile starts that wait again. A smaller file renamed over an input (write-then-rename, as
 * `postern pki` and the account page write the pin table) is complete when it appears: taken at once. Once seen cut short
 * or gone, an input is waited for until unchanged whatever its size (a part of a longer new content is as long as the
 * old), unless a file is renamed over it, or SIGHUP takes the inputs as they are (taken()). `onSettling` is told the
 * files waited for (and [] when the wait ends).
 */
import { readdir, stat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { inputMatcher, isScriptName, type WatchedInputs } from './watched-inputs.ts';
import { PathWatches } from './path-watches.ts';
import { envKnob } from '../config/env-knob.ts';

export class ChangeWatcher {
  #watches: PathWatches | null = null;
  /** The inputs the folders' identities and the sizes' baseline were last taken for (as JSON). */
  #watchedSet = '';
  #timer: NodeJS.Timeout | null = null;
  /** The inputs last watched, and their scripts folders. */
  #inputs: WatchedInputs | null = null;
  #folders = new Set<string>();
  /** watch() calls run one after another: each replaces the watcher the one before set up. */
  #watchQueue: Promise<void> = Promise.resolve();
  #rewatching = false;
  #rewatchAgain = false;
  /** What each watched folder's path led to when it was last watched, and the timer that compares. */
  #folderIds = '';
  #folderCheck: NodeJS.Timeout | null = null;
  #isInput: (path: string) => boolean = () => false;
  /** Last seen identity of each file a raw `change` was reported for (see the class comment). */
  #seen = new Map<string, string>();
  /** Raw events whose file status is being read. */
  #inFlight = 0;
  #inputEvents = 0;
  #otherEvents = 0;
  #polls = 0;
  #closed = false;
  /** Why file events cannot be had (the first watch error), or null while they can. */
  #unavailable: string | null = null;
  /** The inputs' status as last polled (only once watching is unavailable), and the timer that polls. */
  #polled: Map<string, string> | null = null;
  #polledSet = '';
  #poll: NodeJS.Timeout | null = null;
  /** Events about inputs (and folder rewatches) that the file system reported, not the poll's findings. */
  #reported = 0;
  #reportedAtLastPoll = 0;
  /** A change the poll found before any event about it: its file, and #reported then (judged at the next poll). */
  #unreported: { file: string; reported: number } | null = null;
  readonly #settleMs: number;
  readonly #onSettled: () => void;
  readonly #onActivity: () => void;
  readonly #onUnavailable: (reason: string) => void;
  readonly #onSettling: (files: Shrunk[]) => void;
  /** Each input file's size when a change was last let through (or when first watched): what "shrank" is judged against. */
  #taken: Map<string, Sized> | null = null;
  /** A shrunk input waited for: the inputs' status when the wait began, and the timer that looks again. */
  #holding: { status: string; timer: NodeJS.Timeout | null; files: Shrunk[] } | null = null;
  /** The settle period ended and the inputs' sizes are being read. */
  #judging = false;
  readonly #shrunkSettleMs: number;

  constructor(settleMs: number, onSettled: () => void, onActivity: () => void = () => undefined, onUnavailable: (reason: string) => void = () => undefined,
    onSettling: (files: Shrunk[]) => void = () => undefined, shrunkSettleMs = SHRUNK_SETTLE_MS) {
    this.#settleMs = settleMs;
    this.#onSettled = onSettled;
    this.#onActivity = onActivity;
    this.#onUnavailable = onUnavailable;
    this.#onSettling = onSettling;
    this.#shrunkSettleMs = shrunkSettleMs;
  }

  /** The inputs that shrank and are waited for (SHRUNK_SETTLE_MS unchanged) before their change is let through. */
  get settling(): Shrunk[] { return this.#holding?.files ?? []; }

  /** Why file changes are found by polling instead of events (the watch error), or null while events come. */
  get unavailable(): string | null { return this.#unavailable; }

  /** Events about inputs seen so far. */
  get inputEvents(): number { return this.#inputEvents; }
  /** Events about other files in the watched folders, ignored. */
  get otherEvents(): number { return this.#otherEvents; }
  /** Polls of the inputs' status finished so far. */
  get polls(): number { return this.#polls; }
  /** A settle period is running or an event is still being looked at. */
  get pending(): boolean { return this.#timer !== null || this.#inFlight > 0 || this.#judging || this.#holding !== null; }

  /**
   * Watch these inputs. When the set changed, the new watcher is ready before the old one is closed, so
   * no event falls into a gap between them.
   */
  watch(inputs: WatchedInputs, opts: { fresh?: boolean } = {}): Promise<void> {
    const run = this.#watchQueue.then(() => this.#watch(inputs, opts.fresh ?? false));
    this.#watchQueue = run.catch(() => undefined);
    return run;
  }

  async #watch(inputs: WatchedInputs, fresh: boolean): Promise<void> {
    if (this.#closed) return;
    const isInput = inputMatcher(inputs);
    // Judged by the new set from now on: events of the new watches may come before they are all set.
    this.#isInput = isInput;
    this.#inputs = inputs;
    this.#folders = new Set(inputs.folders);
    const first = this.#watches === null;
    this.#watches ??= new PathWatches((event, name, watchedPath) => this.#raw(event, name, watchedPath), (err, path) => {
      // A file or script that cannot be watched on its own (unreadable, a symlink loop) is still an entry of a watched
      // folder, and its build says what is wrong with it: watching is unavailable only for want of watches or
      // descriptors, or when a folder cannot be watched.
      if (this.#watchedAlone(path) && !OUT_OF_WATCHES.has(err.code ?? '')) return;
      this.#watchFailed(err);
    });
    const set = JSON.stringify(inputs);
    if (first || fresh || set !== this.#watchedSet) {
      this.#watchedSet = set;
      this.#folderIds = await folderIdentities(watchedFolders(inputs));
      // The baseline for "shrank": taken at the first watch; an input named later counts from its first size seen.
      const sizes = await sizesOfInputs(inputs);
      this.#taken ??= new Map();
      for (const [file, sized] of sizes) if (!this.#taken.has(file)) this.#taken.set(file, sized);
    }
    this.#folderCheck ??= setInterval(() => void this.#checkFolders(), FOLDER_CHECK_MS).unref();
    this.#poll ??= setInterval(() => void this.#pollInputs(), POLL_MS).unref();
    if (this.#closed) return;
    // The folders of the input files and the scripts folders, their entries (not their subfolders): a file renamed
    // over an input, deleted and made again, or a swapped `..data` symlink is an event in the folder. And each input
    // file and script itself: one that is a symlink to a file elsewhere is edited where no watched folder sees it.
    const targets = new Set([...watchedFolders(inputs), ...inputs.files, ...await scriptsIn(inputs.folders)]);
    if (this.#closed) return;
    // The new watches are set before the old ones go: no event falls into a gap between them. Afresh: the paths
    // may lead elsewhere now (a folder replaced); the look that follows (#rewatch) covers the moment between.
    for (const path of targets) if (fresh) this.#watches.renew(path); else this.#watches.add(path);
    this.#watches.keepOnly(targets);
  }

  /** A watch could not be set (or broke): changes are found by the poll alone; look at the inputs now. */
  #watchFailed(err: unknown): void {
    this.#eventsUnavailable(err instanceof Error ? err.message : String(err));
    this.#input();
  }

  #eventsUnavailable(reason: string): void {
    if (this.#unavailable !== null || this.#closed) return;
    this.#unavailable = reason;
    this.#onUnavailable(reason);
  }

  async #pollInputs(): Promise<void> {
    const inputs = this.#inputs;
    if (!inputs || this.#closed) return;
    // A change found by the last poll, and still no event about it a poll period later: none will come.
    const suspect = this.#unreported;
    this.#unreported = null;
    if (suspect && this.#reported === suspect.reported) {
      this.#eventsUnavailable(`the file system reported no change of ${suspect.file} (overlayfs, FUSE, NFS, a shared folder?)`);
    }
    const reportedBefore = this.#reportedAtLastPoll;
    this.#reportedAtLastPoll = this.#reported;
    const { status: now, complete } = await statusOfInputs(inputs);
    this.#polls++;
    if (this.#closed || inputs !== this.#inputs) { this.#polled = null; return; }
    // Out of descriptors: this look says nothing about the inputs. The next compares with the last one that did,
    // and judges the events since it as if this one had not been.
    if (!complete) { this.#reportedAtLastPoll = reportedBefore; return; }
    // Another set of inputs (a reload named a new table): a new baseline, not a change nobody reported.
    const set = JSON.stringify(inputs);
    const before = this.#polledSet === set ? this.#polled : null;
    this.#polled = now;
    this.#polledSet = set;
    if (!before) return;
    const changed = [...new Set([...before.keys(), ...now.keys()])].find((k) => before.get(k) !== now.get(k));
    if (changed === undefined) return;
    // An event since the last poll: events come (this one may just have been quicker). Else judge at the next poll.
    if (this.#unavailable === null && this.#reported === reportedBefore) this.#unreported = { file: changed, reported: this.#reported };
    this.#input(false);
  }

  /** A raw fs.watch event: `path` is the entry's name in a watched folder, or the watched file's own name. */
  #raw(event: string, path: string | null, watchedPath: string | undefined): void {
    if (!path || !watchedPath) return this.#input(); // nothing to judge by: count it
    // A folder's watcher names the entry; a file's own watcher names the file itself.
    const candidates = isAbsolute(path) ? [path] : [join(watchedPath, path), ...basename(watchedPath) === path ? [watchedPath] : []];
    const file = candidates.find((p) => this.#isInput(p));
    if (!file) return this.#other();
    if (this.#folders.has(file)) this.#rewatch();
    // Made, removed, or renamed over: its own watch (set on what the path led to before) is set again.
    else if (event === 'rename' && this.#watchedAlone(file)) this.#watches?.renew(file);
    if (event !== 'change') return this.#input();
    // Start the settle period only after the status read, so it begins after the newest write it saw.
    this.#inFlight++;
    void stat(file).then(
      (s) => `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`,
      () => 'missing',
    ).then((identity) => {
      this.#inFlight--;
      if (this.#seen.get(file) === identity) return this.#onActivity(); // only the access time changed
      this.#seen.set(file, identity);
      this.#input();
    });
  }

  /** An input file, or a script in a scripts folder: watched on its own as well as through its folder. */
  #watchedAlone(path: string): boolean {
    return (this.#inputs?.files.includes(path) ?? false) || (this.#folders.has(dirname(path)) && isScriptName(basename(path)));
  }

  async #checkFolders(): Promise<void> {
    const inputs = this.#inputs;
    if (!inputs || this.#rewatching || this.#closed) return;
    if (await folderIdentities(watchedFolders(inputs)) !== this.#folderIds && inputs === this.#inputs) this.#rewatch();
  }

  /** A scripts folder itself was replaced: watch the one now at its path, then look at the inputs again. */
  #rewatch(): void {
    this.#reported++; // a folder replaced was seen (by an event or the folder check): not a change gone unreported
    if (this.#rewatching) {
      this.#rewatchAgain = true;
      return;
    }
    this.#rewatching = true;
    void (async () => {
      do {
        this.#rewatchAgain = false;
        if (this.#inputs) await this.watch(this.#inputs, { fresh: true }).catch(() => undefined);
      } while (this.#rewatchAgain && !this.#closed);
      this.#rewatching = false;
      this.poke();
    })();
  }

  /** `reported`: false for a change the poll found (no file-system event). */
  #input(reported = true): void {
    if (reported) this.#reported++;
    this.#inputEvents++;
    this.poke();
  }

  #other(): void {
    this.#otherEvents++;
    this.#onActivity();
  }

  /** (Re)start the settle period; the reloader also uses it to look again once the inputs are quiet. */
  poke(): void {
    if (this.#closed) return;
    if (this.#timer) clearTimeout(this.#timer);
    // A wait for a shrunk input starts again from this event (the status compare at its end would see it too).
    if (this.#holding?.timer) { clearTimeout(this.#holding.timer); this.#holding.timer = null; }
    this.#heldOut = false;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      void this.#judge();
    }, this.#settleMs);
    this.#onActivity();
  }

  /**
   * The inputs have been quiet for the settle period: let the change through, unless an input shrank since the
   * content last let through; then wait until it has been unchanged for the longer period (see the class comment).
   */
  async #judge(): Promise<void> {
    const inputs = this.#inputs;
    if (!inputs || this.#closed) return this.#letThrough(new Map());
    this.#judging = true;
    let sizes: Map<string, Sized>;
    let status: string;
    try {
      sizes = await sizesOfInputs(inputs);
      // The files' own status only, not their folders' (an editor's swap file beside a script changes the folder's).
      status = JSON.stringify([...(await statusOfInputs(inputs)).status].filter(([path]) => !inputs.folders.includes(path)));
    } finally {
      this.#judging = false;
    }
    if (this.#closed) return;
    // An event came while the sizes were read: its own settle period judges again.
    if (this.#timer !== null) return this.#onActivity();
    // Other inputs are watched now (a reload named a new table): judge by them, the change not dropped.
    if (inputs !== this.#inputs) return this.poke();
    const taken = this.#taken ?? new Map<string, Sized>();
    const shrunk: Shrunk[] = [];
    for (const [file, before] of taken) {
      const now = sizes.get(file);
      if (!now && !isFileInput(inputs, file)) continue; // no longer an input
      // Gone counts as emptied (a script removed before its new version is copied in). A file renamed over the input
      // (another inode: `mv t.new t`, an editor's save, `postern pki`'s own writes) was complete when it appeared, so
      // a smaller one is taken at once; only the same file cut short in place, or an empty one, may be half written.
      const inPlace = now !== undefined && now.id === before.id;
      const cutShort = (now?.size ?? 0) < before.size && (inPlace || !now?.size);
      // Seen cut short or gone since the content last let through: still being written until it stays unchanged,
      // whatever its size now (the new content may be longer than the old, and a part of it as long); a file made
      // again after it was gone is written in place too. Only a file renamed over the one cut short ends that.
      const seen = this.#cutShort.get(file);
      const stillWritten = seen !== undefined && (seen === GONE || (now !== undefined && now.id === seen));
      if (cutShort || stillWritten) {
        shrunk.push({ file, before: before.size, now: now?.size ?? 0 });
        this.#cutShort.set(file, now?.id ?? GONE); // made again: that file, until something is renamed over it
      } else this.#cutShort.delete(file);
    }
    if (!shrunk.length) return this.#letThrough(sizes);
    const held = this.#holding;
    // Unchanged through the whole longer period (the timer was not reset by an event, the status is the same): taken.
    if (held && held.status === status && held.timer === null && this.#heldOut) return this.#letThrough(sizes);
    this.#heldOut = false;
    const fresh = !held || held.status !== status;
    if (held?.timer) clearTimeout(held.timer);
    const timer = setTimeout(() => {
      if (this.#holding) this.#holding.timer = null;
      this.#heldOut = true;
      void this.#judge();
    }, this.#shrunkSettleMs);
    timer.unref();
    this.#holding = { status, timer, files: shrunk };
    if (fresh) this.#onSettling(shrunk);
    this.#onActivity();
  }

  /** The size and file of each input now: what a forced reload takes (see taken()). */
  sizesNow(): Promise<InputSizes> {
    return this.#inputs ? sizesOfInputs(this.#inputs) : Promise.resolve(new Map());
  }

  /**
   * A reload forced by SIGHUP swapped in the inputs as they were at `sizes` (read before its build; it is superseded
   * when they change during it): the administrator says they are whole. A wait for an input cut short ends, and later
   * changes are judged from these. Else the wait went on after SIGHUP, status said it waited for a content already in
   * force, and an input that keeps changing (a log-like file configured as a table) held every later edit for good.
   */
  taken(sizes: InputSizes): void {
    if (this.#closed) return;
    if (this.#holding) {
      if (this.#holding.timer) clearTimeout(this.#holding.timer);
      this.#holding = null;
      this.#onSettling([]);
    }
    this.#heldOut = false;
    this.#cutShort.clear();
    if (sizes.size) this.#taken = new Map(sizes);
    this.#onActivity();
  }

  /** The longer period ran out with no event (cleared by poke through #holding.timer). */
  #heldOut = false;

  /** Inputs seen cut short in place (their file's id) or gone (GONE) since the content last let through (#judge). */
  #cutShort = new Map<string, string>();

  #letThrough(sizes: Map<string, Sized>): void {
    if (this.#holding) {
      if (this.#holding.timer) clearTimeout(this.#holding.timer);
      this.#holding = null;
      this.#onSettling([]);
    }
    this.#heldOut = false;
    this.#cutShort.clear();
    if (sizes.size) this.#taken = sizes;
    this.#onSettled();
    this.#onActivity();
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#holding?.timer) clearTimeout(this.#holding.timer);
    if (this.#folderCheck) clearInterval(this.#folderCheck);
    if (this.#poll) clearInterval(this.#poll);
    this.#timer = null;
    this.#watches?.close();
  }
}

/**
 * An input that shrank (emptied, cut short, gone) must be unchanged this long before its change is taken.
 * POSTERN_SHRUNK_SETTLE_MS sets another (tests make it long, so that a slow machine cannot end a wait between two parts).
 */
export const SHRUNK_SETTLE_MS = envKnob('POSTERN_SHRUNK_SETTLE_MS', 2000);

/** An input that is smaller than in the content last let through: its size then and now (0: empty or gone). */
export interface Shrunk { file: string; before: number; now: number }

/** What ChangeWatcher's #cutShort holds for an input seen gone. */
const GONE = 'gone';

/** An input's size and which file it is (device and inode: a file renamed over it is another). */
interface Sized { size: number; id: string }

/** Each input file's Sized, by path (ChangeWatcher.sizesNow). */
export type InputSizes = ReadonlyMap<string, Sized>;

/** How a log line and `postern status` name the inputs waited for: `/etc/postern/blocked.txt (20480 → 0 bytes)`. */
export function describeSettling(files: readonly Shrunk[]): string[] {
  return files.map((f) => `${f.file} (${f.before} → ${f.now} bytes)`);
}

/** The log line of a wait for shrunk inputs beginning (once, not at every further write while it lasts). */
export function settlingMessage(files: readonly Shrunk[]): string {
  return `waiting for ${describeSettling(files).join(', ')} to stay unchanged for ${SHRUNK_SETTLE_MS / 1000} s before reloading: `
    + 'an input cut short or removed may be half written until it stays unchanged, whatever its size (write it beside and rename it over to have it taken at once; SIGHUP reloads now)';
}

/** Whether `file` is one of the input files (not a script in a scripts folder, which may be gone for good). */
function isFileInput(inputs: WatchedInputs, file: string): boolean {
  return inputs.files.includes(file) || inputs.folders.includes(dirname(file));
}

/** The size of every input file and script that exists now (a missing one is left out). */
async function sizesOfInputs(inputs: WatchedInputs): Promise<Map<string, Sized>> {
  const sizes = new Map<string, Sized>();
  const of = async (p: string): Promise<void> => {
    try { const s = await stat(p); if (s.isFile()) sizes.set(p, { size: s.size, id: `${s.dev}:${s.ino}` }); } catch { /* missing */ }
  };
  for (const file of inputs.files) await of(file);
  for (const folder of inputs.folders) {
    let names: string[] = [];
    try { names = (await readdir(folder)).filter(isScriptName); } catch { /* missing: its scripts count as gone */ }
    for (const n of names) await of(join(folder, n));
  }
  return sizes;
}

/** The scripts folders' paths are looked at this often to see one replaced as a whole. */
const FOLDER_CHECK_MS = 1000;

/** The inputs' status is compared this often (what finds a change no event reported). */
export const POLL_MS = 1000;

/**
 * Errors of the process or the system, not of the file: out of descriptors (a leak, a flood of connections), or of
 * kernel memory. A read failing so is no change: taken for one, the poll concluded a moment later that the file
 * system reports no changes, and gave up watching for good.
 */
const OWN_RESOURCE_ERRORS = new Set(['EMFILE', 'ENFILE', 'ENOMEM']);
/** What a watch cannot be set for, whatever the path: the process's or the user's inotify resources used up. */
const OUT_OF_WATCHES = new Set([...OWN_RESOURCE_ERRORS, 'ENOSPC']);

/**
 * The status of every input file and script (inode, size, modification and status change times), and of each
 * scripts folder (its identity and the scripts in it), as one string: what polling compares. The status change time moves at every write, so an edit that keeps the
 * size and puts the modification time back (`cp -p`, `rsync -t`, `touch -r`) is still seen. `complete` is false when
 * a read failed for want of the process's own resources (OWN_RESOURCE_ERRORS).
 */
async function statusOfInputs(inputs: WatchedInputs): Promise<{ status: Map<string, string>; complete: boolean }> {
  let ownFailure = false;
  const code = (e: NodeJS.ErrnoException): string => {
    if (OWN_RESOURCE_ERRORS.has(e.code ?? '')) ownFailure = true;
    return e.code ?? 'error';
  };
  const of = (p: string): Promise<string> => stat(p).then((s: Stats) => `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`, code);
  const status = new Map<string, string>();
  for (const file of inputs.files) status.set(file, await of(file));
  for (const folder of inputs.folders) {
    let names: string[] = [];
    let listed = 'listed';
    try { names = (await readdir(folder)).filter(isScriptName).sort(); } catch (e) { listed = code(e as NodeJS.ErrnoException); }
    // The folder by its identity and its scripts' names, not its times: any file made or removed in it (vim's
    // `.rcptto.js.swp`, a note) moves them, and no input event comes for such a file (the watcher ignores it), so
    // the poll reported, at error and for good, that the file system reports no changes.
    const folderIs = await stat(folder).then((s: Stats) => `${s.dev}:${s.ino}`, code);
    status.set(folder, `${folderIs} ${listed} ${names.join('/')}`);
    for (const n of names) status.set(join(folder, n), await of(join(folder, n)));
  }
  return { status, complete: !ownFailure };
}

/**
 * Every folder watched: the scripts folders and the folders of the input files. A release-style deploy swaps
 * the configuration's folder as a whole (`ln -sfn releases/42 /etc/postern`, or a `mv` of the folder): the watch
 * stays on the old one, where nothing changes any more, and the swap itself happens in a folder not watched.
 */
function watchedFolders(inputs: WatchedInputs): string[] {
  return [...new Set([...inputs.files.map((f) => dirname(f)), ...inputs.folders])].sort();
}

/** Which folder each path leads to now (device and inode, through symlinks), as one string. */
async function folderIdentities(folders: readonly string[]): Promise<string> {
  const ids = await Promise.all(folders.map((f) => stat(f).then((s: Stats) => `${s.dev}:${s.ino}`, () => 'missing')));
  return ids.join(' ');
}

/** The scripts in these folders now (a folder that cannot be read has none). */
async function scriptsIn(folders: readonly string[]): Promise<string[]> {
  const lists = await Promise.all(folders.map((f) => readdir(f).then((names) => names.filter(isScriptName).map((n) => join(f, n)), () => [])));
  return lists.flat();
}
