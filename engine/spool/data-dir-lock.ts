/**
 * An exclusive lock on a directory for the life of the process: `<dir>/postern.lock` names the holder's
 * PID and start time. Two servers on one data directory would each clean up what they take for the
 * other's crash (its half-received messages) and write the same journal. A lock whose holder is gone
 * (kill -9, power loss) is taken over; the start time tells a live holder from an unrelated process that
 * got the same PID since. Any directory can be locked this way, a worker's own journal directory too.
 *
 * The file is created whole (written aside, then linked into place), so a reader never sees it half
 * written. Taking over a stale lock moves it aside first and checks that it moved the stale one.
 */
import { closeSync, constants, fstatSync, linkSync, mkdirSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const LOCK_FILE = 'postern.lock';

export class DirectoryLockedError extends Error {
  readonly pid: number;
  readonly lockFile: string;
  constructor(dir: string, lockFile: string, pid: number) {
    super(pid === process.pid
      ? `${dir} is already in use by this process (lock ${lockFile})`
      : `${dir} is in use by another Postern process (PID ${pid}; lock ${lockFile}): stop it first, or give this one another dataDir`);
    this.pid = pid;
    this.lockFile = lockFile;
  }
}

export interface DirectoryLock {
  readonly lockFile: string;
  /** Remove the lock (idempotent). */
  release(): void;
  /**
   * The lock file still names this process; one removed (a cleanup of the folder, tmpfiles) is made again
   * ('restored'): without it a second server would start on the same directory. 'taken': another live process
   * holds it now (with its PID); 'unwritable': gone, and cannot be made again (the error).
   */
  keep(): { state: 'held' | 'restored' } | { state: 'taken'; pid: number } | { state: 'unwritable'; error: string };
}

/** Lock files this process holds, and what each says. */
const held = new Map<string, string>();
let exitHook = false;

/** `name`: the lock file's name (another lock of the same folder: `postern pki`'s of a folder that may be the data directory). */
export function acquireDirectoryLock(dir: string, name = LOCK_FILE): DirectoryLock {
  const absolute = resolve(dir);
  mkdirSync(absolute, { recursive: true, mode: 0o700 });
  const lockFile = join(absolute, name);
  if (held.has(lockFile)) throw new DirectoryLockedError(dir, lockFile, process.pid);
  const mine = `${process.pid} ${startTime(process.pid) ?? '-'}\n`;
  for (let tries = 0; tries < 10; tries++) {
    if (create(lockFile, mine)) {
      held.set(lockFile, mine);
      if (!exitHook) {
        exitHook = true;
        process.on('exit', () => { for (const file of [...held.keys()]) releaseFile(file); });
      }
      return { lockFile, release: () => releaseFile(lockFile), keep: () => keepFile(lockFile, mine) };
    }
    const theirs = readOrNull(lockFile);
    if (theirs === null) continue; // released meanwhile
    const holder = /^(\d+) (\d+|-)\n$/.exec(theirs);
    if (holder && alive(Number(holder[1]), holder[2] === '-' ? null : holder[2]!)) {
      throw new DirectoryLockedError(dir, lockFile, Number(holder[1]));
    }
    // Stale (or unreadable): move it aside, and put it back if what moved was a new holder's.
    const aside = `${lockFile}.stale.${process.pid}`;
    try {
      renameSync(lockFile, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    const moved = readOrNull(aside);
    if (moved !== theirs) try { linkSync(aside, lockFile); } catch { /* a third one holds it now */ }
    unlinkSync(aside);
  }
  throw new Error(`${dir}: cannot take the lock ${lockFile} (it keeps changing hands)`);
}

/** Create the lock file with its content in one step; false if it exists. */
function create(lockFile: string, content: string): boolean {
  const tmp = `${lockFile}.${process.pid}.tmp`;
  // Created exclusively: never written through a file or symbolic link already at that name (left by a process
  // that had our PID, or put there by another user where they can write: a pin table's folder, say).
  try {
    writeFileSync(tmp, content, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    unlinkSync(tmp);
    writeFileSync(tmp, content, { mode: 0o600, flag: 'wx' });
  }
  try {
    linkSync(tmp, lockFile);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    unlinkSync(tmp);
  }
}

function keepFile(lockFile: string, mine: string): ReturnType<DirectoryLock['keep']> {
  if (!held.has(lockFile)) return { state: 'unwritable', error: 'released' };
  for (let tries = 0; tries < 3; tries++) {
    const now = readOrNull(lockFile);
    if (now === mine) return { state: 'held' };
    if (now !== null) {
      const holder = /^(\d+) (\d+|-)\n$/.exec(now);
      if (holder && alive(Number(holder[1]), holder[2] === '-' ? null : holder[2]!)) return { state: 'taken', pid: Number(holder[1]) };
      return { state: 'unwritable', error: `${lockFile} names no live process: ${JSON.stringify(now.slice(0, 40))}` };
    }
    try {
      if (create(lockFile, mine)) return { state: 'restored' };
    } catch (err) {
      return { state: 'unwritable', error: (err as Error).message };
    }
  }
  return { state: 'unwritable', error: `${lockFile} keeps changing` };
}

function releaseFile(lockFile: string): void {
  const mine = held.get(lockFile);
  if (mine === undefined) return;
  held.delete(lockFile);
  if (readOrNull(lockFile) === mine) try { unlinkSync(lockFile); } catch { /* gone already */ }
}

/** The PID of the live process that holds `dir`'s lock (not this one), or null: none, or a stale lock. */
export function lockHolder(dir: string): number | null {
  const theirs = readOrNull(join(resolve(dir), LOCK_FILE));
  const holder = theirs === null ? null : /^(\d+) (\d+|-)\n$/.exec(theirs);
  return holder && alive(Number(holder[1]), holder[2] === '-' ? null : holder[2]!) ? Number(holder[1]) : null;
}

/** Whether the process that wrote a lock still runs (not this one: its own locks are in `held`). */
function alive(pid: number, started: string | null): boolean {
  if (pid === process.pid) return false; // a lock from an earlier process that had our PID (containers: PID 1)
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  const stat = procStat(pid);
  if (stat === null) return true; // no /proc: trust the PID
  if (stat.state === 'Z') return false; // killed, not yet reaped
  return started === null || stat.started === started;
}

function startTime(pid: number): string | null {
  return procStat(pid)?.started ?? null;
}

/** State and start time (clock ticks since boot) from /proc/<pid>/stat, on Linux. */
function procStat(pid: number): { state: string; started: string } | null {
  const text = readOrNull(`/proc/${pid}/stat`);
  if (text === null) return null;
  // Fields after the command name, which is in parentheses and may itself contain spaces and ")".
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0]!, started: fields[19]! };
}

/**
 * The file's text; '' for what is not a regular file (no lock of ours: taken for a stale one). A FIFO at a lock's
 * path (left there, or planted in a folder others can write) blocked the read, and the start with it, for good:
 * the thread stuck in open(), SIGTERM could not stop the process either. Opened without waiting for a writer.
 */
function readOrNull(file: string): string | null {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    return fstatSync(fd).isFile() ? readFileSync(fd, 'latin1') : '';
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

/**
 * Why other local users could plant files or symbolic links in `dir` (made 0700 by the server, but an existing
 * one is used as it is): a folder writable by its group or by everyone, or owned by another user. Null: only
 * this server's user (and root) can. A warning at start, not a refusal: containers' shared volumes are often 0777.
 * `owner: false`: its mode only (`postern check`, which may well be run by root or another user than the server's).
 */
export function openToOthers(dir: string, me = 'this server\'s user', { owner = true }: { owner?: boolean } = {}): string | null {
  const st = statSync(dir);
  const uid = process.getuid?.();
  if (owner && uid !== undefined && st.uid !== uid && st.uid !== 0) return `owned by uid ${st.uid}, not by ${me} (uid ${uid})`;
  if ((st.mode & 0o022) && !(st.mode & 0o1000)) return `writable by ${st.mode & 0o002 ? 'every local user' : 'its group'} (mode ${(st.mode & 0o777).toString(8)})`;
  return null;
}

/** The warning for openToOthers(), for the log. */
export function openToOthersWarning(dir: string, why: string): string {
  return `${dir}: ${why}: another local user could put files or symbolic links there that the server would read or write through; make it the server user's own (chmod 700 ${dir})`;
}
