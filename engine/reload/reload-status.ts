/**
 * The operator-visible state of hot reloading: counters, the generation in force and the last error.
 * Kept in memory and mirrored to `<dataDir>/status.json` so `postern status` can read it from outside.
 */
import { writeFileAtomic } from '../spool/fsync.ts';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';

/**
 * Under `postern serve`'s supervisor every child reloads the same inputs; only the queue process writes
 * the file (POSTERN_STATUS_WRITER=1), with the supervisor's pid (POSTERN_SERVER_PID): the server's.
 */
const SERVER_PID = Number(process.env.POSTERN_SERVER_PID) || process.pid;
const WRITES_FILE = process.env.POSTERN_STATUS_WRITER !== '0';

export interface ReloadStatusData {
  pid: number;
  startedAt: string;
  generation: number;
  /** Successful reloads (swaps). */
  reloads: number;
  failedReloads: number;
  /** Times the inputs were compared with the generation in force (after a settled change, or SIGHUP). */
  checks: number;
  /** Builds thrown away because an input changed while they read it (a newer build follows). */
  supersededBuilds: number;
  lastReloadAt: string | null;
  /** Messages of the last failed reload (file:line:col: …); null once a reload succeeds. */
  lastError: string[] | null;
  /** Changes that were not applied and need a restart (e.g. a new listener address). */
  pendingRestart: string[];
  /** Why file changes are polled for instead of watched (inotify used up: EMFILE, ENOSPC), or null while they are watched. */
  watching: string | null;
  /** Inputs that shrank and are waited for before their change is taken (`file (before → now bytes)`), or null. */
  settling: string[] | null;
}

export class ReloadStatus {
  readonly data: ReloadStatusData;
  readonly #file: string;
  #saving: Promise<void> = Promise.resolve();

  constructor(dataDir: string, generation: number) {
    this.#file = join(dataDir, 'status.json');
    this.data = {
      pid: SERVER_PID, startedAt: new Date().toISOString(), generation, reloads: 0, failedReloads: 0, checks: 0, supersededBuilds: 0,
      lastReloadAt: null, lastError: null, pendingRestart: [], watching: null, settling: null,
    };
  }

  succeeded(generation: number, pendingRestart: string[]): Promise<void> {
    Object.assign(this.data, { generation, lastReloadAt: new Date().toISOString(), lastError: null, pendingRestart });
    this.data.reloads++;
    return this.save();
  }

  failed(errors: string[]): Promise<void> {
    this.data.failedReloads++;
    this.data.lastError = errors;
    this.data.lastReloadAt = new Date().toISOString();
    return this.save();
  }

  /** Writes are queued: two overlapping writes of the one temporary file could leave an older state behind. */
  save(): Promise<void> {
    if (!WRITES_FILE) return Promise.resolve();
    this.#saving = this.#saving.then(async () => {
      // Not through a fixed temporary name: in a data directory others may write, a link planted there was written through.
      await writeFileAtomic(this.#file, JSON.stringify(this.data, null, 2) + '\n', 0o600, { durable: false }).catch(() => undefined);
    });
    return this.#saving;
  }

  /** Once the writes started so far are done (a stop waits for them: an exit would cut one and leave its temporary file). */
  written(): Promise<void> {
    return this.#saving;
  }
}

/**
 * The refused reload of the server running on `dataDir`, if its status file says so and its process is there:
 * what a command that changes an input (`pki revoke`) must say, since that server keeps its last good generation,
 * the change left out. Null when none runs, the file cannot be read, or its last reload succeeded.
 */
export async function refusedReloadOf(dataDir: string): Promise<string[] | null> {
  let data: Partial<ReloadStatusData>;
  try {
    data = JSON.parse(await readFile(join(dataDir, 'status.json'), 'utf8')) as Partial<ReloadStatusData>;
  } catch {
    return null;
  }
  if (!Array.isArray(data.lastError) || !data.lastError.length || typeof data.pid !== 'number') return null;
  try {
    process.kill(data.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return null; // gone: a file left by a server that stopped
  }
  return data.lastError.map(String);
}

/** The warning line of a command that changed `what` while the running server's reloads are refused, or null. */
export async function refusedReloadWarning(dataDir: string, what: string): Promise<string | null> {
  const refused = await refusedReloadOf(dataDir);
  if (!refused) return null;
  return `warning: the running server's last reload was refused (${refused[0]}${refused.length > 1 ? `, and ${refused.length - 1} more` : ''}): `
    + `it keeps its last good configuration, and with it ${what}, until that is fixed (postern status)\n`;
}
