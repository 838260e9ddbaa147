import { deadlineAfterReads } from '../timing/deadline-after-reads.ts';

/**
 * How long the spool waits for the disk to confirm a message (a journal flush, a message file's sync, a hold) before
 * the message is refused: `spool.syncDeadlineMs`. A disk that stops answering (a lost SAN or NFS path, a drive in
 * endless retries, device-mapper queueing without a path) never returns the sync: every client waited at its final
 * dot with no reply for as long as the disk hung, and the sessions piled up. Far beyond a healthy sync
 * (milliseconds), far within the 10 minutes a client waits for the reply to its final dot (RFC 5321 §4.5.3.2.6).
 */
export const DEFAULT_SYNC_DEADLINE_MS = 30_000;
/**
 * The least deadline the configuration takes: a healthy but slow disk (a spinning disk under a burst, a RAID
 * rebuilding, a network filesystem's commit) takes a second or more for a sync now and then; a shorter deadline
 * refused its mail, and took the node out of its load balancer's pool, while nothing was wrong.
 */
export const MIN_SYNC_DEADLINE_MS = 5_000;
/** The most it takes: within the 10 minutes a client waits for the reply to its final dot, with room to spare. */
export const MAX_SYNC_DEADLINE_MS = 300_000;
/** Syncs past their deadline that have not returned, of every SyncWatch of this process (syncsHung). */
let hungInProcess = 0;

/**
 * Whether a sync of this process is past its deadline and has not returned: process.exit() then waits for it (Node joins
 * every thread of libuv's pool as it exits), for as long as the disk hangs. A one-shot command ends without that wait.
 */
export function syncsHung(): boolean { return hungInProcess > 0; }

/** A spool's deadline, read at each sync: set from the configuration (and its reloads) by the server. */
export interface SyncDeadline { ms: number }

/**
 * The refusal of a write the disk has not confirmed for `ms` (`what`: the write; `consequence`: what becomes of what
 * it was for).
 */
export function notConfirmed(what: string, ms: number, consequence = 'the message is not kept'): Error {
  return Object.assign(new Error(`the disk has not confirmed ${what} for ${Math.round(ms / 1000)} s (a disk or storage path that stopped answering?): ${consequence}`),
    { code: 'ETIMEDOUT', unconfirmed: true });
}

/** Whether `err` is a refusal of notConfirmed() (the disk hung), not a failure the disk returned. */
export function isUnconfirmed(err: unknown): boolean {
  return (err as { unconfirmed?: unknown } | null)?.unconfirmed === true;
}

/**
 * The syncs of one spool that may each refuse their message at the deadline. A sync past it keeps its thread of
 * libuv's pool until the disk answers: while one does, a new one is not started (its message is refused at once),
 * or every large message and hold would take another, until the pool had none left for anything (DNS lookups,
 * password hashes, every other file operation of the process).
 */
export class SyncWatch {
  readonly #deadline: SyncDeadline;
  /** Syncs past their deadline that have not returned, and since when the oldest has waited (performance.now()). */
  #hung = 0;
  #hungSince = 0;
  /** Settled once no sync past its deadline is left (answered()), while one is. */
  #answered: { promise: Promise<void>; resolve: () => void } | null = null;

  constructor(deadline: SyncDeadline) {
    this.#deadline = deadline;
  }

  /** The deadline this watch reads at each sync (the spool's `syncDeadline`). */
  get deadline(): SyncDeadline { return this.#deadline; }

  /** Syncs past their deadline that have not returned yet. */
  get hung(): number { return this.#hung; }

  /** Since when (performance.now()) the oldest sync past its deadline has waited, while one has not returned; else null. */
  get hungSince(): number | null { return this.#hung > 0 ? this.#hungSince : null; }

  /**
   * Settles once every sync past its deadline has returned: the disk answers again, and what was refused meanwhile can
   * be written. null while none is past its deadline.
   */
  answered(): Promise<void> | null {
    if (this.#hung === 0) return null;
    if (!this.#answered) {
      let resolve = (): void => undefined;
      const promise = new Promise<void>((r) => { resolve = r; });
      this.#answered = { promise, resolve };
    }
    return this.#answered.promise;
  }

  /**
   * `sync()`, or its refusal (notConfirmed) once the deadline has passed without its answer; refused at once, and
   * not started, while an earlier one still hangs. The sync goes on: the caller makes sure that what it was for is
   * not kept whichever way it ends. `consequence`: what the refusal says becomes of what the write was for.
   */
  within(what: string, sync: () => Promise<void>, consequence?: string): Promise<void> {
    if (this.#hung > 0) return Promise.reject(notConfirmed(`an earlier write (before ${what})`, performance.now() - this.#hungSince, consequence));
    const started = performance.now();
    const deadlineMs = this.#deadline.ms;
    let cancel = (): void => undefined;
    let late = false;
    const syncing = sync();
    // Judged after the poll phase: a process that gets the CPU back late runs its timers first, and a sync the disk
    // had confirmed in time, its completion waiting to be read, refused its message and was counted as hung.
    const deadline = new Promise<never>((_, reject) => {
      cancel = deadlineAfterReads(deadlineMs, () => {
        late = true;
        hungInProcess++;
        if (this.#hung++ === 0) this.#hungSince = started;
        reject(notConfirmed(what, deadlineMs, consequence));
      });
    });
    // Its failure after the deadline is no one's; returned at last, it no longer holds new syncs back.
    void syncing.catch(() => undefined).finally(() => {
      if (!late) return;
      this.#hung--;
      hungInProcess--;
      if (this.#hung === 0) {
        this.#answered?.resolve();
        this.#answered = null;
      }
    });
    return Promise.race([syncing, deadline]).finally(() => cancel());
  }
}
