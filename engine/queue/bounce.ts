/**
 * Spools a bounce: the DSN for the failed recipients of a message becomes a new message from the null
 * sender to the original envelope sender, committed durably before the failures are recorded.
 *
 * Its id is derived from the original's id, the attempt and the kind of notice: a crash after the notice was
 * spooled and before the attempt's outcome was recorded makes the attempt run again under the same number, and
 * that retry finds the notice instead of sending the sender a second one (the notice waits for that record
 * before it is delivered: QueueRunner). Only recipients it does not report get a new notice, in the next slot; a
 * notice that reports recipients the retry did not (accepted this time) is withdrawn (marked done, removed unsent). Called at every attempt's record, with no one to
 * report too, for that check: then it spools nothing and its id is null. `withdrawn`: the runner's to remove.
 */
import { createHash } from 'node:crypto';
import type { QueueSpool } from '../cluster/spool-set.ts';
import type { SpoolEnvelope } from '../spool/envelope.ts';
import { buildDsn, type FailedRecipient } from './dsn.ts';

export async function spoolBounce(
  spool: NoticeSpool, hostname: string, original: SpoolEnvelope, message: Buffer, failed: FailedRecipient[], expired: boolean,
  kind: 'failure' | 'success', attempt: number,
): Promise<{ id: string | null; withdrawn: string[] }> {
  return spoolNoticeOnce(spool, original.id, kind, attempt, failed.map((f) => f.recipient), async (id, reported) => {
    const now = new Date();
    const writer = spool.create(id);
    try {
      writer.write(buildDsn({ hostname, original, originalMessage: message, failed: failed.filter((f) => reported.includes(f.recipient)), expired, kind, now }));
      await writer.commit({
        version: 1,
        id,
        receivedAt: now.toISOString(),
        sender: '',
        recipients: [{ address: original.sender }],
        noticeOf: { id: original.id, attempt, reported },
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
  });
}

export type NoticeSpool = Pick<QueueSpool, 'create' | 'hasNotice' | 'readEnvelope' | 'updateState'>;

/**
 * The notice of `attempt` of message `originalId` reporting `reportedNow` (recipients, or whatever its notices name),
 * spooled by `spoolIt` under the id it is given, once whatever the crashes: the notices earlier runs of this attempt
 * spooled (each cut off by a crash before the attempt's record: slot 0, 1…, each spooled only after the one before
 * it; a withdrawn one stays spooled, marked done, until this record) are kept when they report only what this run
 * reports, and withdrawn otherwise; what no kept one reports is spooled in the next slot. (A second crash once left a
 * notice under a random id, which the next run neither found nor withdrew: it went out naming a recipient that run
 * delivered, or beside the next run's notice for the same recipient.) The notice must carry `noticeOf` with this
 * attempt, so that it waits for the attempt's record (QueueRunner).
 */
export async function spoolNoticeOnce(
  spool: NoticeSpool, originalId: string, kind: 'failure' | 'success', attempt: number, reportedNow: string[],
  spoolIt: (id: string, reported: string[]) => Promise<void>,
): Promise<{ id: string | null; withdrawn: string[] }> {
  const now = new Set(reportedNow);
  const covered = new Set<string>();
  let kept: string | null = null;
  const withdrawn: string[] = [];
  let slot = 0;
  for (; await spool.hasNotice(noticeId(originalId, kind, attempt, slot)); slot++) {
    const earlier = noticeId(originalId, kind, attempt, slot);
    // Unreadable: taken as reporting no one (a second notice rather than none).
    const notice = await spool.readEnvelope(earlier).catch(() => null);
    if (!notice || notice.recipients.every((r) => r.status)) continue; // withdrawn by an earlier run
    const reported = notice.noticeOf?.reported ?? [];
    if (reported.some((r) => !now.has(r))) {
      // It names what this run did not report (a recipient accepted now, or deferred): sent all the same, it told the
      // sender a delivered recipient had failed. It has not gone out (it waits for this attempt's record: QueueRunner),
      // so it is withdrawn, and what is reported now gets a new one.
      await withdraw(spool, notice, REPORTED_OTHERWISE);
      withdrawn.push(earlier);
      continue;
    }
    for (const r of reported) covered.add(r);
    kept ??= earlier;
  }
  const rest = reportedNow.filter((r) => !covered.has(r));
  if (!rest.length) return { id: kept, withdrawn };
  const id = noticeId(originalId, kind, attempt, slot);
  await spoolIt(id, rest);
  return { id, withdrawn };
}

/**
 * The notice's id: the original's time prefix (the queue's order), then `y` (failure) or `z` (success), never in
 * the hexadecimal part of a fresh id (Spool.newId), then a digest of the original's id and the attempt.
 */
export function noticeId(originalId: string, kind: 'failure' | 'success', attempt: number, slot = 0): string {
  const digest = createHash('sha256').update(slot === 0 ? `${originalId}/${attempt}` : `${originalId}/${attempt}/${slot}`).digest('hex');
  return `${originalId.slice(0, 9)}${kind === 'failure' ? 'y' : 'z'}${digest.slice(0, 22)}`;
}

const REPORTED_OTHERWISE = 'withdrawn: spooled by a run of its attempt that a crash cut off, and the run after it reported otherwise';
const MESSAGE_DELETED = 'withdrawn: its message was deleted (postern queue delete) before the attempt that spooled it was recorded';

/**
 * The failure notices of `attempt` of message `originalId` still to go out, withdrawn: its message was deleted
 * (`postern queue delete`, "without delivering or bouncing it"). A notice spooled by a run of the attempt that a crash
 * cut off waits for the attempt's record (QueueRunner), and a message deleted meanwhile never has one: it was let go
 * once its message was gone, and the sender of a deleted spam run got the bounce all the same. Success notices stay
 * (their recipients were delivered). Returns the ids of the attempt's failure notices, withdrawn now or before (by the
 * delete, by an earlier look): the queue runner then removes them at once instead of at their next try, which was
 * a retry delay away (the notice still listed by `postern queue list` meanwhile).
 */
export async function withdrawNoticesOfDeleted(
  spool: Pick<QueueSpool, 'hasNotice' | 'readEnvelope' | 'updateState'>, originalId: string, attempt: number,
): Promise<string[]> {
  const withdrawn: string[] = [];
  for (let slot = 0; await spool.hasNotice(noticeId(originalId, 'failure', attempt, slot)); slot++) {
    const id = noticeId(originalId, 'failure', attempt, slot);
    // Gone meanwhile (ENOENT), or damaged (no code: it cannot go out as written): passed over. A read the disk failed
    // (EIO) is no answer: taken for "gone", it let the notice of a deleted message go out while `postern queue
    // delete` reported success; thrown, the delete fails and says why.
    const notice = await spool.readEnvelope(id).catch((err: NodeJS.ErrnoException) => { if (err.code && err.code !== 'ENOENT') throw err; return null; });
    if (!notice) continue;
    if (!notice.recipients.every((r) => r.status)) await withdraw(spool, notice, MESSAGE_DELETED);
    withdrawn.push(id);
  }
  return withdrawn;
}

/**
 * A notice taken back before it went out: marked done rather than removed, so that its slot stays taken (a later run
 * of the attempt, after another crash, still finds the slots after it; an id must never be spooled twice). The queue
 * runner removes it, unsent, once the attempt is recorded (or its message is gone).
 */
async function withdraw(spool: Pick<QueueSpool, 'updateState'>, notice: SpoolEnvelope, why: string): Promise<void> {
  await spool.updateState(notice.id, {
    attempts: notice.attempts, nextAttemptAt: notice.nextAttemptAt, errors: [...notice.errors, why],
    recipients: notice.recipients.map((r) => ({ ...r, status: 'bounced', lastError: why })),
  });
}
