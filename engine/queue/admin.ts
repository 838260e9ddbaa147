/**
 * What `postern queue` does to the spool a server may be running on: list and show messages, make them
 * due now (retry), delete them. Only atomic state replacements and unlinks, never spool.init().
 */
import type { QueueSpool } from '../cluster/spool-set.ts';
import type { SpoolEnvelope } from '../spool/envelope.ts';

export interface QueueEntry {
  id: string;
  receivedAt: string;
  sender: string;
  size: number;
  attempts: number;
  nextAttemptAt: string;
  /** Recipients not yet delivered or bounced, with their last error. */
  pending: Array<{ address: string; lastError: string | null }>;
  done: number;
}

export async function listQueue(spool: QueueSpool): Promise<{ entries: QueueEntry[]; unreadable: Array<{ id: string; error: string }> }> {
  const entries: QueueEntry[] = [];
  const unreadable: Array<{ id: string; error: string }> = [];
  for (const id of await spool.list()) {
    let env: SpoolEnvelope;
    try {
      env = await spool.readEnvelope(id);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') unreadable.push({ id, error: (err as Error).message });
      continue;
    }
    entries.push({
      id, receivedAt: env.receivedAt, sender: env.sender, size: env.size, attempts: env.attempts, nextAttemptAt: env.nextAttemptAt,
      pending: env.recipients.filter((r) => !r.status).map((r) => ({ address: r.address, lastError: r.lastError ?? null })),
      done: env.recipients.filter((r) => r.status).length,
    });
  }
  return { entries, unreadable };
}

/** Make messages due now; a running server notices at its next scan. Returns the ids changed. */
export async function retryMessages(spool: QueueSpool, ids: string[] | 'all'): Promise<string[]> {
  const targets = ids === 'all' ? await spool.list() : ids;
  const now = new Date().toISOString();
  const changed: string[] = [];
  for (const id of targets) {
    let env: SpoolEnvelope;
    try {
      env = await spool.readEnvelope(id);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        if (ids === 'all') continue;
        throw err;
      }
      // An unreadable state file: start again from the envelope as accepted (recipients already delivered
      // may get a second copy; at least once, never lost).
      env = await spool.readEnvelope(id, { withState: false });
    }
    await spool.updateState(id, { attempts: env.attempts, nextAttemptAt: now, errors: env.errors, recipients: env.recipients });
    if (!(await spool.has(id))) { await spool.remove(id); continue; } // delivered meanwhile
    changed.push(id);
  }
  await spool.requestRescan();
  return changed;
}

/** Remove a message without delivering or bouncing it. False if it was not there. */
export async function deleteMessage(spool: QueueSpool, id: string): Promise<boolean> {
  if (!(await spool.has(id))) return false;
  await spool.remove(id);
  await spool.requestRescan();
  return true;
}
