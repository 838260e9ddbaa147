/**
 * A long queue built quickly through the spool API (not SMTP): one small message per recipient, committed
 * together, then optionally deferred (a state file saying one attempt failed and when the next is due).
 */
import { randomBytes } from 'node:crypto';
import { Spool } from '../../engine/spool/spool.ts';

const SESSION = { listener: 'in', remoteAddress: '192.0.2.1', helo: 'client', authenticatedUser: null, clientCertificate: null };

/** Spools one message per recipient into `spool` (initialised); returns their ids, in order. */
/**
 * `receivedAt`: when they say they were accepted (default now), also the time in their ids (Spool.idTime) when
 * given; `attempts`: the failed attempts a deferred one had (default 1).
 */
export async function spoolMessages(spool: Spool, recipients: readonly string[], opts: { deferredUntil?: Date; receivedAt?: Date; attempts?: number } = {}): Promise<string[]> {
  const now = (opts.receivedAt ?? new Date()).toISOString();
  const at = opts.receivedAt?.getTime();
  const ids = recipients.map(() => (at === undefined ? spool.newId() : at.toString(36).padStart(9, '0') + randomBytes(5).toString('hex')));
  await Promise.all(recipients.map((to, i) => {
    const writer = spool.create(ids[i]!);
    writer.write(Buffer.from(`Subject: ${i}\r\n\r\nbody\r\n`));
    return writer.commit({ version: 1, id: ids[i]!, receivedAt: now, sender: 's@origin.test', recipients: [{ address: to }], size: 0, session: SESSION, attempts: 0, nextAttemptAt: now, errors: [] });
  }));
  const until = opts.deferredUntil;
  if (until) {
    for (let i = 0; i < ids.length; i += 200) {
      await Promise.all(ids.slice(i, i + 200).map((id, j) => spool.updateState(id, {
        attempts: opts.attempts ?? 1, nextAttemptAt: until.toISOString(), recipients: [{ address: recipients[i + j]!, lastError: '451 4.3.0 try later' }], errors: [],
      })));
    }
  }
  return ids;
}
