/**
 * `postern queue list | show ID | retry ID|--all | delete ID`: the spool of the configuration given,
 * safe while the server runs (atomic state updates; the server rescans every delivery.scanIntervalMs).
 * Retry and delete leave a record the server logs, with who ran them (queue/operations.ts).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadStartConfig } from '../app/postern.ts';
import { ConfigError } from '../config/config-error.ts';
import { Spool } from '../spool/spool.ts';
import { deleteMessage, listQueue, retryMessages } from '../queue/admin.ts';
import { recordQueueOperation } from '../queue/operations.ts';
import { formatQueueShape, queueShape } from '../queue/shape.ts';
import { SpoolSet } from '../cluster/spool-set.ts';

/** Configuration and I/O problems: a message on stderr and exit status 1, like the other commands. */
async function guarded(fn: () => Promise<number>): Promise<number> {
  try {
    return await fn();
  } catch (err) {
    process.stderr.write(`postern: ${err instanceof ConfigError ? `configuration refused:\n${err.message}` : (err as Error).message}\n`);
    return 1;
  }
}

/**
 * Every spool the server of this configuration uses (one per worker process, and the queue process's).
 * Never init(): that would clear a running server's incoming/.
 */
function spoolOf(opts: { config?: string }): SpoolSet {
  const { config } = loadStartConfig({ configPath: opts.config });
  const root = join(config.dataDir, 'spool');
  // An empty queue and a data directory no server has used read alike: say which (a wrong dataDir, a typo).
  if (!existsSync(root)) process.stderr.write(`postern: no spool at ${root}: no server has run with this dataDir\n`);
  return new SpoolSet(new Spool(root));
}

function checkId(id: string): boolean {
  if (Spool.isId(id)) return true;
  process.stderr.write(`postern: not a queue id: ${JSON.stringify(id)}\n`);
  return false;
}

const notFound = (id: string, err: unknown): number => {
  process.stderr.write(`postern: ${id}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such message in the queue' : (err as Error).message}\n`);
  return 1;
};

export function queueSummaryCommand(opts: { config?: string; json?: boolean }): Promise<number> {
  return guarded(async () => {
    const { entries, unreadable } = await listQueue(spoolOf(opts));
    const shape = queueShape(entries);
    process.stdout.write(opts.json ? `${JSON.stringify({ ...shape, unreadable }, null, 2)}\n` : formatQueueShape(shape));
    for (const u of opts.json ? [] : unreadable) process.stderr.write(`postern: ${u.id}: unreadable: ${u.error}\n`);
    return unreadable.length ? 1 : 0;
  });
}

export function queueListCommand(opts: { config?: string; json?: boolean }): Promise<number> {
  return guarded(async () => {
    const { entries, unreadable } = await listQueue(spoolOf(opts));
    if (opts.json) {
      process.stdout.write(`${JSON.stringify({ messages: entries, unreadable }, null, 2)}\n`);
      return unreadable.length ? 1 : 0;
    }
    if (!entries.length && !unreadable.length) {
      process.stdout.write('Mail queue is empty\n');
      return 0;
    }
    for (const e of entries) {
      process.stdout.write(`${e.id}  ${String(e.size).padStart(8)}  ${e.receivedAt}  <${e.sender}>  attempts ${e.attempts}, next ${e.nextAttemptAt}\n`);
      for (const r of e.pending) process.stdout.write(`    ${r.address}${r.lastError ? `\n      (${r.lastError})` : ''}\n`);
      if (e.done) process.stdout.write(`    (${e.done} recipient${e.done === 1 ? '' : 's'} done)\n`);
    }
    for (const u of unreadable) process.stdout.write(`${u.id}  UNREADABLE: ${u.error}\n`);
    process.stdout.write(`-- ${entries.length} message${entries.length === 1 ? '' : 's'}${unreadable.length ? `, ${unreadable.length} unreadable` : ''}\n`);
    return unreadable.length ? 1 : 0;
  });
}

export function queueShowCommand(id: string, opts: { config?: string; message?: boolean }): Promise<number> {
  return guarded(async () => {
    if (!checkId(id)) return 1;
    const spool = spoolOf(opts);
    try {
      const envelope = await spool.readEnvelope(id);
      process.stdout.write(`${JSON.stringify(envelope, null, 2)}\n`);
      if (opts.message) process.stdout.write(`\n${(await spool.readMessage(id)).toString('utf8')}`);
      return 0;
    } catch (err) {
      return notFound(id, err);
    }
  });
}

export function queueRetryCommand(id: string | undefined, opts: { config?: string; all?: boolean }): Promise<number> {
  return guarded(async () => {
    if (!id && !opts.all) {
      process.stderr.write('postern: queue retry needs an ID or --all\n');
      return 1;
    }
    if (id && !checkId(id)) return 1;
    try {
      const spools = spoolOf(opts);
      const changed = await retryMessages(spools, opts.all ? 'all' : [id!]);
      await recordQueueOperation(spools.root, 'retry', changed);
      process.stdout.write(`${changed.length} message${changed.length === 1 ? '' : 's'} due now${changed.length ? `: ${changed.join(' ')}` : ''}\n`);
      return 0;
    } catch (err) {
      return notFound(id ?? '--all', err);
    }
  });
}

export function queueDeleteCommand(id: string, opts: { config?: string }): Promise<number> {
  return guarded(async () => {
    if (!checkId(id)) return 1;
    const spools = spoolOf(opts);
    if (await deleteMessage(spools, id)) {
      await recordQueueOperation(spools.root, 'delete', [id]);
      process.stdout.write(`${id}: deleted\n`);
      return 0;
    }
    process.stderr.write(`postern: ${id}: no such message in the queue\n`);
    return 1;
  });
}
