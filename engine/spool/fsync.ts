/**
 * Directory fsync, coalesced: commits that arrive while a directory sync is running share the next one,
 * so N concurrent messages cost about two directory syncs, not N. And a whole file replaced durably.
 */
import { lchown, lstat, mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { basename, dirname, join } from 'node:path';

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

/**
 * Replaces `file` whole: a temporary file beside it (created with `mode`, never wider on the way), fsynced,
 * renamed over it, the folder fsynced. A reader sees the old file or the new one, never half of one; after a
 * kill or a power loss the old one or the new one is there, never an empty or torn one; and once this
 * returns the new one survives a power loss. The server user's only unless `mode` says otherwise, and so is a
 * folder made for it: the umask may be 000. The temporary file is created exclusively under a random name: a
 * symbolic link another user planted in the folder is never written through. `durable: false` skips the syncs
 * (a status file rewritten often: whole against a kill, not against a power loss).
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600, { durable = true }: { durable?: boolean } = {}): Promise<void> {
  const dir = dirname(file);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // A dot name: not a table, not a CRL, nothing the reload watcher counts as an input.
  const tmp = temporaryPath(file);
  // A new file takes the folder's owner and group, as a replaced one keeps its own.
  const owner = await stat(file).catch(() => null) ?? await stat(dir);
  const handle = await open(tmp, 'wx', mode);
  try {
    await handle.writeFile(data);
    await handle.chmod(mode); // the umask may have narrowed it
    await keepOwner(handle, owner);
    if (durable) await handle.sync();
    await handle.close();
    await rename(tmp, file);
  } catch (err) {
    await handle.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
  if (!durable) return;
  // The rename is durable only once the folder is: until then a power loss may bring the old file back.
  await fsyncDirectory(dir).catch((err: Error) => { throw new Error(`${file}: written, but its folder could not be synced to disk (${err.message}): it may not survive a power loss; do it again`); });
}

/**
 * writeFileAtomic for callers that may not wait (a watchdog thread whose main thread is stuck, a supervisor's
 * bookkeeping in an exit handler): the same promise, a reader never sees half of the file, and a kill or a power
 * loss leaves the old file or the new one. The temporary file is a dot name, which no reader of the folder takes
 * for the real one. `durable: false` skips the syncs: whole against a kill, not against a power loss (for a
 * process about to be killed, that must not wait on a busy disk first).
 */
export function writeFileAtomicSync(file: string, data: string | Uint8Array, { mode = 0o600, durable = true }: { mode?: number; durable?: boolean } = {}): void {
  const dir = dirname(file);
  const tmp = temporaryPath(file);
  const fd = openSync(tmp, 'wx', mode);
  try {
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off, bytes.length - off);
    if (durable) fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, file);
  } catch (err) {
    try { closeSync(fd); } catch { /* closed already */ }
    rmSync(tmp, { force: true });
    throw err;
  }
  if (!durable) return;
  const dirFd = openSync(dir, 'r');
  try { fsyncSync(dirFd); } finally { closeSync(dirFd); }
}

/**
 * The file replaced keeps its owner and group, and a new one gets its folder's: `sudo postern pins remove` would
 * otherwise leave a root-owned table (0640, say) that a server running as `postern` cannot read, and its reload
 * would keep the removed pin; `sudo postern pki issue` a root-owned 0600 inventory in the server's CA folder.
 * Root can give the file back; another user can at least keep a group it is in.
 */
async function keepOwner(handle: FileHandle, was: Stats): Promise<void> {
  if (was.uid === process.getuid?.() && was.gid === process.getgid?.()) return;
  await handle.chown(was.uid, was.gid).catch(() => handle.chown(-1, was.gid)).catch(() => undefined);
}

/** mkdir -p whose new last folder takes its parent's owner and group, as writeFileAtomic's new files do. */
export async function makeFolderLikeParent(dir: string, mode: number): Promise<void> {
  if (await mkdir(dir, { recursive: true, mode }) === undefined) return; // there already
  const parent = await stat(dirname(dir));
  if (parent.uid === process.getuid?.() && parent.gid === process.getgid?.()) return;
  // The parent's owner may write it, and swap the new folder for a link (to /etc, say) before the chown: root
  // chowning by name gave them the link's target. lchown never follows one; a link found there is refused.
  if (!(await lstat(dir)).isDirectory()) throw new Error(`${dir}: replaced by a symbolic link as it was made (another user can write ${dirname(dir)}); nothing written there`);
  await lchown(dir, parent.uid, parent.gid).catch(() => lchown(dir, -1, parent.gid)).catch(() => undefined);
}

const TEMPORARY = /^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$/;

/**
 * A temporary file to write `file` through before its rename: a dot name beside it that names the writing process,
 * so that once that process is gone (killed before its rename) the file can be told from one being written now
 * (isLeftoverTemporary).
 */
export function temporaryPath(file: string): string {
  // node:crypto taken here, not imported: the watchdog thread of every worker and queue process loads this module
  // (its crash record), and loading node:crypto at the thread's start cost it ~15 ms of CPU; at a hang it is loaded
  // then, synchronously, on that thread alone.
  const random = process.getBuiltinModule('node:crypto').randomBytes(4).toString('hex');
  return join(dirname(file), `.${basename(file)}.${process.pid}.${random}.tmp`);
}

/**
 * Whether `name` is a temporary file (temporaryPath's; `olderNames`: another pattern, the writer's pid as its first
 * group) whose writer is gone. One whose writer runs is left alone: its rename is still to come.
 */
export function isLeftoverTemporary(name: string, olderNames?: RegExp): boolean {
  const pid = Number((TEMPORARY.exec(name) ?? olderNames?.exec(name))?.[1]);
  return pid > 0 && !processAlive(pid);
}

/**
 * Removes the temporary files of writeFileAtomic calls in `dir` whose process is gone (killed before its
 * rename): a hidden copy of a CA key would otherwise outlive the key it copies. `olderNames`: the names an older
 * release wrote through, the writer's pid as its first group. Returns their names.
 */
export async function removeLeftoverTemporaries(dir: string, olderNames?: RegExp): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const removed: string[] = [];
  for (const name of names) {
    if (!isLeftoverTemporary(name, olderNames)) continue;
    await rm(join(dir, name), { force: true });
    removed.push(name);
  }
  return removed;
}

/** Whether a process with this id runs (as another user too). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
