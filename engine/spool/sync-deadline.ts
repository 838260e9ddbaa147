/**
 * How long the spool waits for the disk to confirm a message (a journal flush, a message file's sync) before the
 * message is refused. A disk that stops answering (a lost SAN or NFS path, a drive in endless retries,
 * device-mapper queueing without a path) never returns the sync: every client waited at its final dot with no
 * reply for as long as the disk hung, and the sessions piled up. Far beyond a healthy sync (milliseconds), far
 * within the 10 minutes a client waits for the reply to its final dot (RFC 5321 §4.5.3.2.6).
 */
export const SYNC_DEADLINE_MS = 30_000;

/** The refusal of a message whose write the disk has not confirmed for `ms` (`what`: the write). */
export function notConfirmed(what: string, ms: number): Error {
  return Object.assign(new Error(`the disk has not confirmed ${what} for ${Math.round(ms / 1000)} s (a disk or storage path that stopped answering?): the message is not kept`),
    { code: 'ETIMEDOUT' });
}

/**
 * `sync`, or its refusal (notConfirmed) once `ms` have passed without its answer. The sync goes on: the caller makes
 * sure that what it was for is not kept whichever way it ends.
 */
export function syncWithin(sync: Promise<void>, ms: number, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(notConfirmed(what, ms)), ms);
  });
  sync.catch(() => undefined); // its failure after the deadline is no one's
  return Promise.race([sync, late]).finally(() => clearTimeout(timer));
}
