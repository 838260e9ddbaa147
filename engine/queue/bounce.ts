/**
 * Spools a bounce: the DSN for the failed recipients of a message becomes a new message from the null
 * sender to the original envelope sender, committed durably before the failures are recorded.
 */
import type { QueueSpool } from '../cluster/spool-set.ts';
import type { SpoolEnvelope } from '../spool/envelope.ts';
import { buildDsn, type FailedRecipient } from './dsn.ts';

export async function spoolBounce(
  spool: Pick<QueueSpool, 'newId' | 'create'>, hostname: string, original: SpoolEnvelope, message: Buffer, failed: FailedRecipient[], expired: boolean,
  kind: 'failure' | 'success' = 'failure',
): Promise<string> {
  const id = spool.newId();
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
