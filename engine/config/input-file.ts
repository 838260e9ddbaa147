/**
 * Reading a file the configuration names (postern.yaml itself at a reload, tables, the users file, TLS and DKIM
 * files, scripts): opened without blocking, checked to be a regular file no longer than a bound on the open
 * handle, and never read past that bound.
 *
 * A plain readFile opens with a blocking open(2): a FIFO in a file's place (mkfifo by mistake, a tool's named
 * pipe) blocks that open until a writer comes, which is for ever. The build then missed its deadline (reported as
 * a top level that never returns) and kept one of libuv's threads for good, which every later reload did again
 * until the process had none left for its spool; the configuration's own read is outside the deadline, so a
 * FIFO there stopped reloading altogether.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';

/**
 * The longest input file read, other than a script (load-scripts.ts MAX_SCRIPT_BYTES): a generous bound for a
 * lookup table of millions of lines, and still far below what a file copied in by mistake (a log, a disk image)
 * would cost to read whole.
 */
export const MAX_INPUT_BYTES = 256 * 1024 * 1024;

/** Why an input file was not read, beyond what open(2) says: not a regular file, too long, or written to as it was read. */
export class InputFileError extends Error {
  readonly reason: 'not a file' | 'too long' | 'changed';
  /** The file's size when it was opened. */
  readonly size: number;
  constructor(reason: InputFileError['reason'], size: number, message: string) {
    super(message);
    this.name = 'InputFileError';
    this.reason = reason;
    this.size = size;
  }
}

/** The file's bytes. Throws open(2)'s error (with its `code`) or an InputFileError. */
export async function readInputFile(file: string, maxBytes = MAX_INPUT_BYTES): Promise<Buffer> {
  const handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new InputFileError('not a file', info.size, 'not a regular file');
    if (info.size > maxBytes) throw new InputFileError('too long', info.size, `is ${info.size} bytes, longer than the ${maxBytes} read at most: not read`);
    // One byte more than it holds: a file that grows while it is read (a write in progress) is not taken half-written.
    const buffer = Buffer.alloc(info.size + 1);
    let length = 0;
    for (let n = -1; n !== 0 && length < buffer.length; length += n) n = (await handle.read(buffer, length, buffer.length - length, length)).bytesRead;
    if (length > info.size) throw new InputFileError('changed', info.size, 'changed while it was read (a write in progress?): not read');
    return buffer.subarray(0, length);
  } finally {
    await handle.close();
  }
}

/** readInputFile for a caller that cannot wait (the supervisor reading postern.yaml for what to watch). */
export function readInputFileSync(file: string, maxBytes = MAX_INPUT_BYTES): Buffer {
  const fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const info = fstatSync(fd);
    if (!info.isFile()) throw new InputFileError('not a file', info.size, 'not a regular file');
    if (info.size > maxBytes) throw new InputFileError('too long', info.size, `is ${info.size} bytes, longer than the ${maxBytes} read at most: not read`);
    const buffer = Buffer.alloc(info.size + 1);
    let length = 0;
    for (let n = -1; n !== 0 && length < buffer.length; length += n) n = readSync(fd, buffer, length, buffer.length - length, length);
    if (length > info.size) throw new InputFileError('changed', info.size, 'changed while it was read (a write in progress?): not read');
    return buffer.subarray(0, length);
  } finally {
    closeSync(fd);
  }
}

/** What a caller puts after "cannot read: ": the error code of open(2) (ENOENT, EACCES, ELOOP), or the reason. */
export function readProblem(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
}
