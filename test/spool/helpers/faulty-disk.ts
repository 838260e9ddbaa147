/**
 * A disk whose write-back can fail the way Linux's does, for journal segment files (`*.seg`) in this
 * process. node:fs is patched (and syncBuiltinESMExports() carries it to the journal's named imports):
 * positional writes are tracked as dirty ranges per file; `failSync()` makes a coming fdatasync fail
 * with EIO. Then, as on Linux, the dirty pages of that file are lost (their bytes become zeros: what
 * the disk holds where they never arrived) and the error is reported once per open file description,
 * at its next fdatasync, or at the end of one already under way. A crash (kill -9) is then simulated by
 * opening the journal again without closing it: the page cache, i.e. the file, keeps everything else.
 */
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

interface Range { at: number; bytes: number }

export interface FaultyDisk {
  /** The fdatasync after `skip` more of them (on segment files) fails. */
  failSync(opts?: { skip?: number }): void;
  /** The next write to a segment file fails with ENOSPC (a full disk), writing nothing. */
  failWrite(): void;
  /** Failures injected so far. */
  readonly failures: number;
  restore(): void;
}

export function installFaultyDisk(): FaultyDisk {
  const real = { openSync: fs.openSync, closeSync: fs.closeSync, writeSync: fs.writeSync, writevSync: fs.writevSync, fdatasync: fs.fdatasync };
  /** Open segment files: fd → inode. */
  const inodeOf = new Map<number, number>();
  const dirty = new Map<number, Range[]>();
  /** Open file descriptions that have a write-back error still to report. */
  const unreported = new Set<number>();
  let armed: number | null = null;
  let fullDisk = false;
  const enospc = (): NodeJS.ErrnoException => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
  const full = (fd: number): boolean => {
    if (!fullDisk || !inodeOf.has(fd)) return false;
    fullDisk = false;
    failures++;
    return true;
  };
  let failures = 0;

  const track = (fd: number, at: unknown, bytes: number): void => {
    const ino = inodeOf.get(fd);
    if (ino === undefined || typeof at !== 'number' || bytes <= 0) return;
    const list = dirty.get(ino) ?? [];
    list.push({ at, bytes });
    dirty.set(ino, list);
  };
  const eio = (): NodeJS.ErrnoException => Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5, syscall: 'fdatasync' });

  const patched = {
    openSync(path: fs.PathLike, ...rest: unknown[]): number {
      const fd = (real.openSync as (...a: unknown[]) => number)(path, ...rest);
      if (String(path).endsWith('.seg')) inodeOf.set(fd, fs.fstatSync(fd).ino);
      return fd;
    },
    closeSync(fd: number): void {
      inodeOf.delete(fd);
      unreported.delete(fd);
      real.closeSync(fd);
    },
    writeSync(fd: number, buffer: unknown, ...rest: unknown[]): number {
      if (full(fd)) throw enospc();
      const n = (real.writeSync as (...a: unknown[]) => number)(fd, buffer, ...rest);
      if (Buffer.isBuffer(buffer)) track(fd, rest[2], n);
      return n;
    },
    writevSync(fd: number, buffers: NodeJS.ArrayBufferView[], position?: number): number {
      if (full(fd)) throw enospc();
      const n = real.writevSync(fd, buffers, position);
      track(fd, position, n);
      return n;
    },
    fdatasync(fd: number, callback: (err: NodeJS.ErrnoException | null) => void): void {
      const ino = inodeOf.get(fd);
      if (ino === undefined) { real.fdatasync(fd, callback); return; }
      if (armed !== null && armed-- === 0) {
        armed = null;
        failures++;
        // Write-back failed: the dirty pages are gone, and every open file description will hear of it once.
        for (const r of dirty.get(ino) ?? []) real.writeSync(fd, Buffer.alloc(r.bytes), 0, r.bytes, r.at);
        dirty.delete(ino);
        for (const [other, i] of inodeOf) if (i === ino && other !== fd) unreported.add(other);
        setImmediate(() => callback(eio()));
        return;
      }
      const covered = [...(dirty.get(ino) ?? [])];
      real.fdatasync(fd, (err) => {
        if (err) { callback(err); return; }
        if (unreported.delete(fd)) { callback(eio()); return; }
        dirty.set(ino, (dirty.get(ino) ?? []).filter((r) => !covered.includes(r)));
        callback(null);
      });
    },
  };
  Object.assign(fs, patched);
  syncBuiltinESMExports();
  return {
    failSync(opts = {}) { armed = opts.skip ?? 0; },
    failWrite() { fullDisk = true; },
    get failures() { return failures; },
    restore() {
      Object.assign(fs, real);
      syncBuiltinESMExports();
    },
  };
}
