/**
 * Spools a bounce: the DSN for the failed recipients of a message becomes a new message from the null
 * sender to the original envelope sender, committed durably before the failures are recorded.
 *
 * Its id is derived from the original's id, the attempt and the kind of notice: a crash after the notice was
 * spooled and before the attempt's outcome was recorded makes the attempt run again under the same number, and
 * that retry finds the notice instead of sending the sender a second one (the notice waits for that record
 * before it is delivered: QueueRunner). Only recipients it does not report get a new notice; a notice that reports
 * recipients the retry did not (accepted this time) is withdrawn. Called at every attempt's record, with no one to
 * report too, for that check: then it spools nothing and returns null.
 */
import { createHash } from 'node:crypto';
import type { QueueSpool } from '../cluster/spool-set.ts';
import type { SpoolEnvelope } from '../spool/envelope.ts';
import { buildDsn, type FailedRecipient } from './dsn.ts';

export async function spoolBounce(
  spool: Pick<QueueSpool, 'newId' | 'create' | 'hasNotice' | 'readEnvelope' | 'remove'>, hostname: string, original: SpoolEnvelope, message: Buffer, failed: FailedRecipient[], expired: boolean,
  kind: 'failure' | 'success', attempt: number,
): Promise<string | null> {
  let id = noticeId(original.id, kind, attempt);
  if (await spool.hasNotice(id)) {
    // Unreadable: taken as reporting no one (a second notice rather than none).
    const reported = new Set((await spool.readEnvelope(id).catch(() => null))?.noticeOf?.reported ?? []);
    const reportedNow = new Set(failed.map((f) => f.recipient));
    if ([...reported].some((r) => !reportedNow.has(r))) {
      // Spooled by this attempt's run before a crash, it names recipients this run did not report (accepted now, or
      // deferred): sent all the same, it told the sender a delivered recipient had failed. It has not gone out (it
      // waits for this attempt's record: QueueRunner), so it is withdrawn and the recipients reported now get a new one.
      await spool.remove(id);
    } else {
      failed = failed.filter((f) => !reported.has(f.recipient));
      if (!failed.length) return id;
    }
    id = spool.newId(); // recipients that failed only in the retry, or the notice withdrawn: a notice of their own
  }
  if (!failed.length) return null;
  const now = new Date();
  const writer = spool.create(id);
  try {
    writer.write(buildDsn({ hostname, original, originalMessage: message, failed, expired, kind, now }));
    await writer.commit({
      version: 1,
      id,
      receivedAt: now.toISOString(),
      sender: '',
      recipients: [{ address: original.sender }],
      noticeOf: { id: original.id, attempt, reported: failed.map((f) => f.recipient) },
      size: 0,
      // Generated here: no client session. A pre-delivery script sees listener "" and sender "".
      session: { listener: '', remoteAddress: '', helo: null, authenticatedUser: null, clientCertificate: null },
      attempts: 0,
      nextAttemptAt: now.toISOString(),
      errors: [],
    });
  } catch (err) {
    try { writer.abort(); } catch { /* already gone */ }
    throw err;
  }
  return id;
}

/**
 * The notice's id: the original's time prefix (the queue's order), then `y` (failure) or `z` (success), never in
 * the hexadecimal part of a fresh id (Spool.newId), then a digest of the original's id and the attempt.
 */
export function noticeId(originalId: string, kind: 'failure' | 'success', attempt: number): string {
  const digest = createHash('sha256').update(`${originalId}/${attempt}`).digest('hex');
  return `${originalId.slice(0, 9)}${kind === 'failure' ? 'y' : 'z'}${digest.slice(0, 22)}`;
}
