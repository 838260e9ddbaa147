/**
 * `postern queue delete|retry|hold|release` change the spool from another process than the server's, often as another
 * user: each leaves a record, `<spool>/operations/<time>-<pid>-<random>.json`, of what it did and who did it
 * (user, uid, the sudo user, pid). The server's queue runner logs each record at its next scan — or at its
 * next start, when none was running — and removes it, so the server's log (journald, a shipper) has every
 * operation, as Postfix's has postsuper's `ID: removed`.
 */
import { mkdir, readdir, readFile, unlink } from 'node:fs/promises';
import { fsyncDirectory, removeLeftoverTemporaries, writeFileAtomic } from '../spool/fsync.ts';
import { hostname, userInfo } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Logger } from '../logging/logger.ts';

export type QueueOperationKind = 'delete' | 'retry' | 'hold' | 'release';

export interface QueueOperation {
  op: QueueOperationKind;
  ids: string[];
  at: string;
  by: { user: string; uid: number; sudoUser: string | null; pid: number; host: string };
}

const folder = (spoolRoot: string): string => join(spoolRoot, 'operations');

let self: QueueOperation['by'] | null = null;

/** Who runs this command: the user, the sudo user behind it, the process (as first asked: before a change of user). */
export function operator(): QueueOperation['by'] {
  if (self) return self;
  const user = userInfo();
  self = { user: user.username, uid: user.uid, sudoUser: process.env.SUDO_USER ?? null, pid: process.pid, host: hostname() };
  return self;
}

/** Record that this process did `op` to `ids` (none: nothing to record). */
export async function recordQueueOperation(spoolRoot: string, op: QueueOperationKind, ids: readonly string[]): Promise<void> {
  if (!ids.length) return;
  const record: QueueOperation = { op, ids: [...ids], at: new Date().toISOString(), by: operator() };
  const dir = folder(spoolRoot);
  // The folder made now: its own entry on disk too.
  // Only the server's user may add records (the umask may be 000): the server logs each as the operator's.
  if (await mkdir(dir, { recursive: true, mode: 0o700 })) await fsyncDirectory(spoolRoot);
  const name = `${Date.now()}-${process.pid}-${randomBytes(4).toString('hex')}.json`;
  // Whole or not at all (the runner may read the folder at any moment), and on disk before the command says it
  // is done: a record written but not synced could vanish in a power cut, or come back empty, and with it the
  // only account of who deleted the mail.
  await writeFileAtomic(join(dir, name), JSON.stringify(record), 0o600);
}

// Postfix's postsuper words where it has them (`removed`, `placed on hold`, `released from hold`).
const WHAT: Record<QueueOperationKind, string> = { delete: 'removed', retry: 'made due now', hold: 'placed on hold', release: 'released from hold' };

/** Log every recorded operation, oldest first, and remove its record. */
export async function logQueueOperations(spoolRoot: string, log: Logger): Promise<void> {
  const dir = folder(spoolRoot);
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith('.json') && !n.startsWith('.')).sort();
  } catch {
    return; // no operation yet
  }
  await removeLeftoverTemporaries(dir); // of a command killed as it wrote its record
  for (const name of names) {
    const file = join(dir, name);
    try {
      const r = JSON.parse(await readFile(file, 'utf8')) as QueueOperation;
      const who = `${r.by.user}${r.by.sudoUser ? ` (sudo by ${r.by.sudoUser})` : ''}, uid ${r.by.uid}, pid ${r.by.pid} on ${r.by.host}`;
      for (const id of r.ids) {
        log.info({ id, op: r.op, by: r.by, at: r.at }, `${id}: ${WHAT[r.op] ?? r.op} by postern queue ${r.op} (${who}) at ${r.at}`);
      }
    } catch (err) {
      log.warn({ file, err: { message: (err as Error).message } }, 'unreadable record of a postern queue operation: removed');
    }
    await unlink(file).catch(() => undefined);
  }
}
