/**
 * Whether a process's main thread is waiting inside a system call on a file (a write, a sync, an open, a rename of
 * its spool), for the hang checks (thread-progress.ts). The journal writes on the event loop, synchronously: a disk
 * slow to answer (a failing one's retries, a file-system journal waiting on write-back) held the heartbeat back for
 * as long, and the watchdog killed the process as hung after a second. Killing it helped nothing: a thread waiting
 * on the disk dies only once the disk answers, and the process that replaces it writes to the same disk. It cost what
 * a crash costs: the sessions on a worker cut, and the queue process's deliveries under way made again (a write of
 * 1.5 s as each delivery was recorded sent its message anew at every restart). So a wait on a file is I/O under way,
 * as read and write calls are, for BUSY_WITHOUT_TIMERS_MS at most. A wait on anything else (a lock, a pipe, a socket,
 * Atomics.wait) is not.
 * Linux tells: /proc/PID/task/TID/syscall holds the number and arguments of the call a blocked thread is in
 * ("running" for one that is not). A call on a descriptor counts when the descriptor is a file or folder; a call on a
 * path (open, rename, unlink…) counts as it is. Numbers by architecture: x64 and arm64; elsewhere, never.
 */
import { readFileSync, statSync } from 'node:fs';

/** Calls on a descriptor (the first argument), and calls on a path, by number. */
const CALLS: Partial<Record<NodeJS.Architecture, { onFd: ReadonlySet<number>; onPath: ReadonlySet<number> }>> = {
  // read write close fstat pread64 pwrite64 readv writev fsync fdatasync ftruncate getdents64 fallocate preadv pwritev
  // preadv2 pwritev2 fstatfs sync_file_range; open stat lstat rename mkdir rmdir link unlink statfs openat mkdirat
  // newfstatat unlinkat renameat linkat utimensat renameat2 statx
  x64: {
    onFd: new Set([0, 1, 3, 5, 17, 18, 19, 20, 74, 75, 77, 217, 285, 295, 296, 327, 328, 138, 277]),
    onPath: new Set([2, 4, 6, 82, 83, 84, 86, 87, 137, 257, 258, 262, 263, 264, 265, 280, 316, 332]),
  },
  // read write close fstat pread64 pwrite64 readv writev fsync fdatasync ftruncate getdents64 fallocate preadv pwritev
  // preadv2 pwritev2 fstatfs sync_file_range; openat mkdirat newfstatat unlinkat renameat linkat statfs utimensat
  // renameat2 statx
  arm64: {
    onFd: new Set([63, 64, 57, 80, 67, 68, 65, 66, 82, 83, 46, 61, 47, 69, 70, 286, 287, 44, 84]),
    onPath: new Set([56, 34, 79, 35, 38, 37, 43, 88, 276, 291]),
  },
};

/** Whether `pid`'s main thread is blocked in a call on a file now (false when /proc does not say). */
export function waitsOnFile(pid: number): boolean {
  const calls = CALLS[process.arch];
  if (!calls) return false;
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/task/${pid}/syscall`, 'latin1');
  } catch {
    return false; // no /proc, the process gone, or not ours to look at (ptrace rules)
  }
  const [nr, fd] = text.trim().split(' ');
  const call = Number(nr);
  if (!Number.isInteger(call)) return false; // "running"
  if (calls.onPath.has(call)) return true;
  if (!calls.onFd.has(call) || fd === undefined) return false;
  try {
    const target = statSync(`/proc/${pid}/fd/${Number.parseInt(fd, 16)}`);
    return target.isFile() || target.isDirectory();
  } catch {
    return false;
  }
}
