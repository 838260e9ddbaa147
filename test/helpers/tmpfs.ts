/** A small filesystem of a test's own (a tmpfs), so that filling it harms nothing else. Root only: mount. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SmallFilesystem { dir: string; unmount(): void }

/** A tmpfs of `megabytes` (and at most `inodes` files and folders), or why none can be mounted here. */
export function smallFilesystem(megabytes: number, opts: { inodes?: number } = {}): SmallFilesystem | string {
  if (process.getuid?.() !== 0) return 'needs root, to mount a small tmpfs for the spool';
  const dir = mkdtempSync(join(tmpdir(), 'postern-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${megabytes}m${opts.inodes ? `,nr_inodes=${opts.inodes}` : ''}`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    return `cannot mount a tmpfs here: ${(err as Error).message.split('\n')[0]}`;
  }
  return {
    dir,
    unmount() {
      execFileSync('umount', ['-l', dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Whether a tmpfs can be mounted here (tried once, and unmounted at once): else why not, for a test's skip. */
export function needsTmpfs(): string | false {
  const probe = smallFilesystem(1);
  if (typeof probe === 'string') return probe;
  probe.unmount();
  return false;
}

/** A filesystem for one test, mounted inside it (a skipped or filtered test leaves no mount behind). */
export function testFilesystem(megabytes = 32, opts: { inodes?: number } = {}): SmallFilesystem {
  const made = smallFilesystem(megabytes, opts);
  if (typeof made === 'string') throw new Error(made);
  return made;
}
