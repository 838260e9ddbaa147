/**
 * What `postern queue` does to the spool a server may be running on: list and show messages, make them
 * due now (retry), delete them, put them on hold and release them. Only hold files, due requests, unlinks and (for
 * a state file found unreadable) a state written anew, never spool.init().
 */
import type { QueueSpool } from '../cluster/spool-set.ts';
import type { SpoolEnvelope, SpoolHold } from '../spool/envelope.ts';
import { dirname } from 'node:path';
import { inodesError, isNoSpace } from '../spool/reserve.ts';
import { withdrawNoticesOfDeleted } from './bounce.ts';

/**
 * A change to the spool, made on a full disk too: the spool's reserve (engine/spool/reserve.ts) is released and
 * the change made once more. Deleting queued mail is how an administrator frees a full spool, and marking a
 * journal message removed takes a little room: without it `queue delete --all` failed at its first message and
 * freed nothing. (The server makes the reserve again once there is room; the command says it was used.) Out of
 * inodes the reserve is no help (reserve.ts): kept, and the error says inodes.
 */
export async function evenWhenFull<T>(spool: Pick<QueueSpool, 'reserve'>, change: () => Promise<T>): Promise<T> {
  try {
    return await change();
  } catch (err) {
    if (!isNoSpace(err)) throw err;
    const used = spool.reserve.useOnNoSpace();
    if (used === 'inodes') throw inodesError(err as NodeJS.ErrnoException, dirname(spool.reserve.path));
    if (used === 'none') throw err;
    return change();
  }
}

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
  /** On hold (`postern queue hold`): not delivered until released. */
  held: boolean;
}

/**
 * The queue's messages, oldest first, one at a time: `postern queue` prints each as it is read, so a long
 * queue shows at once and is not held in memory whole. Which messages have a state file or a hold comes from
 * one directory listing per spool (scan), not from a failed read per message (most have neither), which made
 * listing 100,000 messages take 15 s before its first line.
 */
export async function* queueEntries(spool: QueueSpool): AsyncGenerator<QueueEntry | { id: string; unreadable: string }> {
  for (const { id, hasState, held, dueRequested } of await spool.scan({ tidy: false })) {
    let env: SpoolEnvelope;
    try {
      env = await spool.readEnvelope(id, { withState: hasState });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') yield { id, unreadable: (err as Error).message };
      continue;
    }
    // Made due by `queue retry|release`, its attempt not yet made (or no server runs): due since then.
    const requested = dueRequested ? await spool.readDueRequest(id) : null;
    const nextAttemptAt = requested !== null && Date.parse(requested) < Date.parse(env.nextAttemptAt) ? requested : env.nextAttemptAt;
    yield {
      id, receivedAt: env.receivedAt, sender: env.sender, size: env.size, attempts: env.attempts, nextAttemptAt,
      pending: env.recipients.filter((r) => !r.status).map((r) => ({ address: r.address, lastError: r.lastError ?? null })),
      done: env.recipients.filter((r) => r.status).length,
      held,
    };
  }
}

export async function listQueue(spool: QueueSpool): Promise<{ entries: QueueEntry[]; unreadable: Array<{ id: string; error: string }> }> {
  const entries: QueueEntry[] = [];
  const unreadable: Array<{ id: string; error: string }> = [];
  for await (const e of queueEntries(spool)) {
    if ('unreadable' in e) unreadable.push({ id: e.id, error: e.unreadable });
    else entries.push(e);
  }
  return { entries, unreadable };
}

/** Messages `retry` makes due per batch: their due requests written side by side, then one directory sync. */
const RETRY_BATCH = 512;

/**
 * Make messages due now; a running server notices at its next scan. Returns the ids changed; a held
 * message is left as it is (`heldIds`: `queue release` makes it due). Done in batches (Spool.requestAttempts):
 * one directory sync per batch, not per message; each message's request is durable before it is returned.
 */
export async function retryMessages(spool: QueueSpool, ids: string[] | 'all', heldIds: string[] = [], missing?: string[]): Promise<string[]> {
  const targets = ids === 'all' ? await spool.list() : ids;
  // `missing`: ids not in the queue (any more) are named there instead of failing the call.
  const tolerateMissing = ids === 'all' || missing !== undefined;
  const changed: string[] = [];
  for (let i = 0; i < targets.length; i += RETRY_BATCH) {
    const due: string[] = [];
    const outcome = new Map<string, 'held' | 'missing' | 'due'>();
    for (const id of targets.slice(i, i + RETRY_BATCH)) {
      if (outcome.has(id)) continue; // named twice
      if (await spool.isHeld(id) && await spool.has(id)) { outcome.set(id, 'held'); continue; }
      const there = await readable(spool, id, tolerateMissing);
      outcome.set(id, there ? 'due' : 'missing');
      if (there) due.push(id);
    }
    await evenWhenFull(spool, () => spool.requestAttempts(due));
    for (const [id, what] of outcome) {
      if (what === 'held') heldIds.push(id);
      else if (what === 'due' && await spool.has(id)) changed.push(id);
      else {
        if (what === 'due') await spool.clearDueRequest(id); // delivered meanwhile: its request goes too
        missing?.push(id);
      }
    }
  }
  await evenWhenFull(spool, () => spool.requestRescan());
  return changed;
}

/**
 * Have a message attempted now: a due request beside its state (Spool.requestAttempt), which the state the queue runner
 * writes never undoes, nor undoes it (a state rewritten here from what was read took back the outcome of an attempt
 * recorded in between). False: it is gone (`tolerateMissing`; otherwise ENOENT is thrown).
 */
async function makeDue(spool: QueueSpool, id: string, tolerateMissing: boolean): Promise<boolean> {
  if (!(await readable(spool, id, tolerateMissing))) return false;
  await evenWhenFull(spool, () => spool.requestAttempt(id));
  if (!(await spool.has(id))) { await spool.clearDueRequest(id); return false; } // delivered meanwhile
  return true;
}

/**
 * Whether the message is there to be made due (false: gone, with `tolerateMissing`; otherwise ENOENT is thrown). An
 * unreadable state file is written anew first: from the envelope as accepted (recipients already delivered may get a
 * second copy; at least once, never lost). The runner does not attempt a message it cannot read: none races this.
 */
async function readable(spool: QueueSpool, id: string, tolerateMissing: boolean): Promise<boolean> {
  try {
    await spool.readEnvelope(id);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      if (tolerateMissing) return false;
      throw err;
    }
    const env = await spool.readEnvelope(id, { withState: false });
    await evenWhenFull(spool, () => spool.updateState(id, { attempts: env.attempts, nextAttemptAt: new Date().toISOString(), errors: env.errors, recipients: env.recipients }));
  }
  return true;
}

/** Remove a message without delivering or bouncing it (held or not). False if it was not there. */
export async function deleteMessage(spool: QueueSpool, id: string): Promise<boolean> {
  if (!(await spool.has(id))) return false;
  // The failure notices of its attempt not yet recorded (spooled by a run a crash cut off, or by the run under way)
  // wait for that record, which a deleted message never gets: withdrawn before the message goes, while they still
  // wait, and again after it, for one the run under way spooled in between (it looks for the message once more after
  // spooling: QueueRunner).
  const unrecorded = await unrecordedAttempt(spool, id);
  const withdrawNotices = async (): Promise<void> => {
    if (unrecorded !== null) await evenWhenFull(spool, () => withdrawNoticesOfDeleted(spool, id, unrecorded));
  };
  await withdrawNotices();
  await evenWhenFull(spool, () => spool.remove(id));
  await spool.release(id); // after the message: a crash in between leaves a hold without a message, removed at start
  await withdrawNotices();
  // No rescan asked: the runner's next scan drops what it no longer lists, and an attempt finds it gone. A rescan
  // rereads every state of the queue (every delete of a loop over a 30,000-message queue cost 1.5 s of its CPU).
  return true;
}

/**
 * The attempt of message `id` whose outcome is not recorded yet: the one after those its state file counts. Null when
 * that file cannot be parsed (cut short, damaged): which attempts are recorded is not known, and the queue runner lets
 * every notice of such a message go (it holds none back for a record it cannot read); taken for none, attempt 1's
 * recorded bounce was withdrawn, and the sender never learnt that a recipient had failed. A failure of the disk itself
 * (EIO) is thrown: the command fails, to be run again.
 */
async function unrecordedAttempt(spool: QueueSpool, id: string): Promise<number | null> {
  try {
    return ((await spool.readState(id))?.attempts ?? 0) + 1;
  } catch (err) {
    if (typeof (err as NodeJS.ErrnoException).code === 'string') throw err;
    return null;
  }
}

/** Which messages `queue retry|delete|hold|release` act on: every one, or those whose sender / a pending recipient matches. */
export interface MessageFilter {
  all?: boolean; from?: string; to?: string;
  /** SHA-256 (lowercase hex) of the client certificate, or of its public key (the pin), the message was accepted with. */
  certificate?: string;
}

/**
 * An address pattern: `user@domain` (that address), `domain` or `@domain` (any address there), `<>` or
 * the empty string (the null sender of bounces). Case-insensitive.
 */
export function addressMatches(pattern: string, address: string): boolean {
  const p = pattern.trim().toLowerCase();
  const a = address.toLowerCase();
  if (p === '' || p === '<>') return a === '';
  const bare = p.replace(/^<(.*)>$/, '$1');
  if (bare.lastIndexOf('@') > 0) return a === bare;
  return a.slice(a.lastIndexOf('@') + 1) === bare.replace(/^@/, '');
}

/** The ids of the messages a filter selects, oldest first (messages whose envelope cannot be read are skipped). */
export async function selectMessages(spool: QueueSpool, filter: MessageFilter): Promise<string[]> {
  const ids = await spool.list();
  if (filter.from === undefined && filter.to === undefined && filter.certificate === undefined) return filter.all ? ids : [];
  const out: string[] = [];
  for (const id of ids) {
    let env: SpoolEnvelope;
    try {
      env = await spool.readEnvelope(id);
    } catch {
      continue; // gone meanwhile, or unreadable (`queue list` names those)
    }
    if (filter.from !== undefined && !addressMatches(filter.from, env.sender)) continue;
    if (filter.to !== undefined && !env.recipients.some((r) => !r.status && addressMatches(filter.to!, r.address))) continue;
    const cert = env.session.clientCertificate;
    if (filter.certificate !== undefined && (!cert || (cert.fingerprintSha256 !== filter.certificate && cert.pinSha256 !== filter.certificate))) continue;
    out.push(id);
  }
  return out;
}

export interface ActionOutcome {
  /** Changed now (held, released, made due, deleted). */
  changed: string[];
  /** Left as they are: already held (hold), not held (release), held (retry). */
  unchanged: string[];
  /** Not in the queue. */
  missing: string[];
}

/**
 * Put messages on hold: the queue runner does not attempt them (from its next attempt: one under way
 * finishes) until they are released, across restarts.
 */
export async function holdMessages(spool: QueueSpool, ids: readonly string[], hold: SpoolHold): Promise<ActionOutcome> {
  const out: ActionOutcome = { changed: [], unchanged: [], missing: [] };
  for (const id of ids) {
    if (!(await spool.has(id))) { out.missing.push(id); continue; }
    if (await spool.isHeld(id)) { out.unchanged.push(id); continue; }
    await evenWhenFull(spool, () => spool.hold(id, hold));
    // Finished meanwhile (an attempt under way): no hold without a message.
    if (!(await spool.has(id))) { await spool.release(id); out.missing.push(id); continue; }
    out.changed.push(id);
  }
  // No rescan asked (it rereads every state of the queue): each scan lists the holds, and an attempt looks first.
  return out;
}

/** Release held messages: due at once (the running server attempts them at its next scan). */
export async function releaseMessages(spool: QueueSpool, ids: readonly string[]): Promise<ActionOutcome> {
  const out: ActionOutcome = { changed: [], unchanged: [], missing: [] };
  for (const id of ids) {
    if (!(await spool.has(id))) { await spool.release(id); out.missing.push(id); continue; }
    if (!(await spool.isHeld(id))) { out.unchanged.push(id); continue; }
    // Made due first, while still held (the runner leaves a held message's due request where it is): a command killed
    // between the two leaves it held, and a second `queue release` finishes. The other order left it released but not
    // due, to wait for its next scheduled attempt (hours away), and a second release found nothing held to make due.
    // Due now, or already gone (delivered by an attempt under way when it was held): either way what was asked happened.
    await makeDue(spool, id, true);
    if (!(await spool.release(id))) { out.unchanged.push(id); continue; } // released meanwhile by another command
    out.changed.push(id);
  }
  if (out.changed.length) await evenWhenFull(spool, () => spool.requestRescan());
  return out;
}
