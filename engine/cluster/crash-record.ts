/**
 * A crash record: a worker names the scripts that made it unusable (<dataDir>/fences/crash-<pid>-<ms>.json),
 * for the supervisor's FenceBook to count. Written by the watchdog thread for a hang of the event loop, and by
 * the worker itself when its sandbox cannot recover (a call abandoned on a parked isolate thread). Synchronous
 * only: the watchdog thread may not wait for the stuck main thread.
 */
import { mkdirSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import type { RunningScript } from '../sandbox/running-call.ts';
import { writeFileAtomicSync } from '../spool/fsync.ts';

export interface CrashRecordFile {
  at: string;
  pid: number;
  worker: number;
  reason: 'hang' | 'unrecoverable';
  scripts: RunningScript[];
  stalledMs?: number;
}

/**
 * Write the record, and empty the running-call mirror (`<mirror>.bin`): the supervisor must not count this
 * death a second time from the mirror (supervisor.ts #diedIn). Throws when the record cannot be written.
 * Written whole: the supervisor may kill this process at any moment here (its own hang limit), and a record cut
 * short must not exist under its name, where it would stand for the crash (the mirror then not read) yet count
 * for nothing.
 */
export function writeCrashRecord(dir: string, mirror: string, record: CrashRecordFile): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileAtomicSync(join(dir, `crash-${record.pid}-${Date.now()}.json`), JSON.stringify(record), { mode: 0o600, durable: false });
  truncateSync(`${mirror}.bin`, 0);
}
