/** A small filesystem of a test's own (a tmpfs, or a loop-mounted ext4), so that filling or breaking it harms nothing else. Root only: mount. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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
      // Never an error of its own: thrown from a test's finally, it would hide the failure that led there.
      try { execFileSync('umount', ['-l', dir], { stdio: 'pipe' }); } catch (err) { console.error(`umount ${dir}: ${(err as Error).message.split('\n')[0]}`); }
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

/** The filesystem read-only from now (a remount), as the kernel leaves one after an error; `writable()` undoes it. */
export function remountReadOnly(fs: SmallFilesystem): { writable(): void } {
  execFileSync('mount', ['-o', 'remount,ro', fs.dir], { stdio: 'pipe' });
  return { writable: () => execFileSync('mount', ['-o', 'remount,rw', fs.dir], { stdio: 'pipe' }) };
}

export interface Ext4Filesystem extends SmallFilesystem {
  /**
   * An ext4 error, as a failing disk or damaged metadata makes one: with errors=remount-ro the kernel makes the
   * filesystem read-only at once (its own emergency state: the mount still says rw, statfs has no ST_RDONLY,
   * access(W_OK) passes; writes fail with EROFS). It stays so until unmounted.
   */
  fail(): void;
}

/** A loop-mounted ext4 image of `megabytes` with errors=remount-ro, or why none can be mounted here. */
export function ext4Filesystem(megabytes = 32): Ext4Filesystem | string {
  if (process.getuid?.() !== 0) return 'needs root, to loop-mount an ext4 image for the spool';
  const dir = mkdtempSync(join(tmpdir(), 'postern-ext4-'));
  const image = `${dir}.img`;
  const remove = (): void => { rmSync(dir, { recursive: true, force: true }); rmSync(image, { force: true }); };
  let device: string;
  try {
    execFileSync('truncate', ['-s', `${megabytes}M`, image], { stdio: 'pipe' });
    execFileSync('mkfs.ext4', ['-q', '-F', image], { stdio: 'pipe' });
    execFileSync('mount', ['-o', 'loop,errors=remount-ro', image, dir], { stdio: 'pipe' });
    device = execFileSync('findmnt', ['-n', '-o', 'SOURCE', dir], { encoding: 'utf8' }).trim().replace(/^\/dev\//, '');
  } catch (err) {
    try { execFileSync('umount', [dir], { stdio: 'pipe' }); } catch { /* not mounted */ }
    remove();
    return `cannot loop-mount an ext4 image here: ${(err as Error).message.split('\n')[0]}`;
  }
  return {
    dir,
    fail: () => writeFileSync(`/sys/fs/ext4/${device}/trigger_fs_error`, '1'),
    unmount() {
      execFileSync('umount', ['-l', dir]);
      remove();
    },
  };
}

/** Whether an ext4 image can be loop-mounted and made to fail here (tried once): else why not, for a test's skip. */
export function needsExt4(): string | false {
  const probe = ext4Filesystem(4);
  if (typeof probe === 'string') return probe;
  probe.unmount();
  return false;
}
