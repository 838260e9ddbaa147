/**
 * Disk faults for real server processes: test/helpers/disk-faults.c built into a preload library (gcc,
 * installed by test/setup-system.sh), and a folder whose files arm each fault once (see the C file).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type DiskFault = 'fdatasync-eio' | 'pwritev-short' | 'pwritev-eio' | 'pread-eio' | 'fsync-queue-eio' | 'open-watchdog-emfile' | 'socket-emfile';
/** Faults on any file: armed with the end of the path they are for (see the C file). */
export type FileFault = 'fsync-eio' | 'fsync-kill' | 'rename-kill' | 'rename-stop' | 'open-stop' | 'write-short' | 'mkdir-swap' | 'fdatasync-hang' | 'fsync-hang' | 'statfs-hang' | 'stat-eio';

export interface DiskFaults {
  /** Environment for the server: the library preloaded, the folder of armed faults. */
  env: Record<string, string>;
  /** The next matching call (on a journal segment or queue folder, in any process of the server) gets `fault`. */
  arm(fault: DiskFault): void;
  /** The next matching call on a file or folder whose path ends with `pathEnd` (in any process) gets `fault`. */
  armFor(fault: FileFault, pathEnd: string): void;
  /** The folder `pathEnd` made next is swapped for a symbolic link to `target` (the mkdir-swap fault). */
  swapFolder(pathEnd: string, target: string): void;
  /** The fault is no longer armed: for `fdatasync-hang`, `fsync-hang` and `statfs-hang`, the disk answers again (the calls waiting go on). */
  disarm(fault: DiskFault | FileFault): void;
  /** Calls that have waited in a fault that holds (`fdatasync-hang`, `fsync-hang`, `statfs-hang`), in every process of the server. */
  hungCalls(fault: 'fdatasync-hang' | 'fsync-hang' | 'statfs-hang'): number;
  /** Whether an armed fault has been taken. */
  taken(fault: DiskFault | FileFault): boolean;
}

const SOURCE = new URL('./disk-faults.c', import.meta.url).pathname;

/** The library, built once per test process (gcc costs ~0.3 s of CPU; a file's tests each ask for faults of their own). */
let built: string | undefined;

export function diskFaults(): DiskFaults {
  const dir = mkdtempSync(join(tmpdir(), 'postern-disk-faults-'));
  if (!built) {
    const library = join(dir, 'disk-faults.so');
    execFileSync('gcc', ['-shared', '-fPIC', '-O2', '-o', library, SOURCE, '-ldl']);
    built = library;
  }
  const library = built;
  const armed = join(dir, 'armed');
  mkdirSync(armed);
  return {
    env: { LD_PRELOAD: library, POSTERN_DISK_FAULTS: armed },
    arm: (fault) => writeFileSync(join(armed, fault), ''),
    armFor: (fault, pathEnd) => writeFileSync(join(armed, fault), pathEnd),
    swapFolder: (pathEnd, target) => {
      writeFileSync(join(armed, 'mkdir-swap.target'), target);
      writeFileSync(join(armed, 'mkdir-swap'), pathEnd);
    },
    disarm: (fault) => rmSync(join(armed, fault), { force: true }),
    hungCalls: (fault) => (existsSync(join(armed, `${fault}.calls`)) ? readFileSync(join(armed, `${fault}.calls`), 'utf8').split('\n').filter(Boolean).length : 0),
    taken: (fault) => !existsSync(join(armed, fault)),
  };
}

/** Whether process `pid` is stopped (a `rename-stop` or `open-stop` fault taken, until the test sends SIGCONT). */
export function isStopped(pid: number): boolean {
  return / T /.test(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\)/, ''));
}
