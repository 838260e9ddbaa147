/**
 * `postern queue [list] | summary | show ID | retry|delete|hold|release ID…|-|--all|--from|--to|--certificate`:
 * the spool of the configuration given, safe while the server runs (atomic state updates; the server
 * rescans every delivery.scanIntervalMs). Retry, delete, hold and release leave a record the server logs,
 * with who ran them (queue/operations.ts).
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { loadStartConfig } from '../config/start-config.ts';
import { ConfigError } from '../config/config-error.ts';
import { dataDirDespiteErrors } from '../config/load-config.ts';
import { Spool } from '../spool/spool.ts';
import {
  deleteMessage, evenWhenFull, holdMessages, listQueue, queueEntries, releaseMessages, retryMessages, selectMessages, type ActionOutcome, type MessageFilter,
} from '../queue/admin.ts';
import { operator, recordQueueOperation } from '../queue/operations.ts';
import { formatMessageReport } from '../queue/show.ts';
import { terminalSafe } from '../queue/terminal-safe.ts';
import { formatQueueShape, queueShape } from '../queue/shape.ts';
import { SpoolSet } from '../cluster/spool-set.ts';
// pins.ts, not the index: that loads the X.509 library, which listing the queue does not need.
import { normalizePin } from '../certificates/pins.ts';

/** Configuration and I/O problems: a message on stderr and exit status 1, like the other commands. */
async function guarded(fn: () => Promise<number>): Promise<number> {
  try {
    return await fn();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // The spool is the server's (mode 0700): say who may read it, not only what failed.
    const hint = code === 'EACCES' || code === 'EPERM' ? ' (postern queue needs the rights of the user the server runs as: run it as that user, or as root)' : '';
    process.stderr.write(`postern: ${err instanceof ConfigError ? `configuration refused:\n${err.message}` : (err as Error).message}${hint}\n`);
    return 1;
  }
}

function spoolOf(opts: { config?: string }, use: SpoolUse): SpoolSet {
  return spoolAndConfig(opts, use).spool;
}

/** What a command does with the queue: reads it (list, summary, show), or changes it (retry, delete, hold, release). */
type SpoolUse = 'read' | 'change';

/**
 * Every spool the server of this configuration uses (one per worker process, and the queue process's), and
 * whether it delivers at all. Never init(): that would clear a running server's incoming/.
 */
function spoolAndConfig(opts: { config?: string }, use: SpoolUse): { spool: SpoolSet; deliveryOn: boolean } {
  const { dataDir, deliveryOn, syncDeadlineMs } = dataDirOf(opts, use);
  const root = join(dataDir, 'spool');
  // An empty queue and a data directory no server has used read alike: say which (a wrong dataDir, a typo).
  if (!existsSync(root)) process.stderr.write(`postern: no spool at ${root}: no server has run with this dataDir\n`);
  else becomeSpoolOwner(root);
  const home = new Spool(root);
  // The server's deadline for a write the disk does not confirm (a hold, a due request, a removal), as the server's.
  if (syncDeadlineMs !== undefined) home.syncDeadline.ms = syncDeadlineMs;
  return { spool: new SpoolSet(home), deliveryOn };
}

/**
 * The data directory of the configuration. A file with errors (the server refuses it) is when the queue most needs
 * a look: a command that only reads the queue reads the data directory the file names (or the default, when it
 * names none), its errors said as warnings. One that changes the queue does so only where the data directory is
 * certain: named in the file, that key without error, and a spool there; else it is refused with the errors.
 */
function dataDirOf(opts: { config?: string }, use: SpoolUse): { dataDir: string; deliveryOn: boolean; syncDeadlineMs?: number } {
  try {
    const { config } = loadStartConfig({ configPath: opts.config });
    return { dataDir: config.dataDir, deliveryOn: config.delivery.enabled, syncDeadlineMs: config.spool.syncDeadlineMs };
  } catch (err) {
    if (!(err instanceof ConfigError) || opts.config === undefined) throw err;
    const found = dataDirDespiteErrors(opts.config, err);
    const certain = found !== null && found.named && existsSync(join(found.dataDir, 'spool'));
    if (found === null || (use === 'change' && !certain)) {
      const why = found === null ? 'its dataDir cannot be read from it'
        : `its dataDir is not certain (${found.named ? `no spool at ${join(found.dataDir, 'spool')}` : 'the file names none: the default would be taken'})`;
      throw new ConfigError([...err.problems, { file: err.problems[0]?.file ?? opts.config, message: `postern queue ${use === 'change' ? 'changes nothing' : 'cannot read the queue'}: ${why}; fix the file${use === 'change' ? ' (or name dataDir in it)' : ''}` }]);
    }
    process.stderr.write(`postern: warning: the configuration has errors (the server refuses it); ${use === 'read' ? 'reading' : 'changing'} the queue of ${found.dataDir}${found.named ? ', the dataDir it names' : ' (it names no dataDir: the default)'}:\n${err.message}\n`);
    return found;
  }
}

/**
 * Run as root (`sudo postern queue …`), act as the user that owns the spool, as Postfix's postsuper does:
 * a state, hold or operation file root wrote (mode 0600) would be unreadable to a server running as
 * `postern`, and the message stuck. Who ran the command is taken first, for the log.
 */
function becomeSpoolOwner(root: string): void {
  if (process.getuid?.() !== 0) return;
  const { uid, gid } = statSync(root);
  if (uid === 0) return;
  operator();
  process.setgroups?.([gid]);
  process.setgid!(gid);
  process.setuid!(uid);
}

function checkId(id: string): boolean {
  if (Spool.isId(id)) return true;
  process.stderr.write(`postern: not a queue id: ${JSON.stringify(id)}\n`);
  return false;
}

/** An id as `queue list` prints it: a held one with its `!` (Postfix's mailq mark), copied or piped from the listing. */
const unmarked = (id: string): string => (id.endsWith('!') ? id.slice(0, -1) : id);

const notFound = (id: string, err: unknown): number => {
  process.stderr.write(`postern: ${id}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such message in the queue' : (err as Error).message}\n`);
  return 1;
};

export function queueSummaryCommand(opts: { config?: string; json?: boolean }): Promise<number> {
  return guarded(async () => {
    const { entries, unreadable } = await listQueue(spoolOf(opts, 'read'));
    const shape = queueShape(entries);
    process.stdout.write(opts.json ? `${JSON.stringify({ ...shape, unreadable }, null, 2)}\n` : formatQueueShape(shape));
    for (const u of opts.json ? [] : unreadable) process.stderr.write(`postern: ${u.id}: unreadable: ${u.error}\n`);
    return unreadable.length ? 1 : 0;
  });
}

export function queueListCommand(opts: { config?: string; json?: boolean }): Promise<number> {
  return guarded(async () => {
    // Each message printed as it is read (queueEntries): the first lines of a long queue come at once, and
    // the queue is never held in memory whole. Output goes out 64 KiB at a time.
    const out = new ChunkedOutput();
    const unreadable: Array<{ id: string; error: string }> = [];
    let count = 0;
    let held = 0;
    if (opts.json) out.write('{\n  "messages": [');
    for await (const e of queueEntries(spoolOf(opts, 'read'))) {
      if ('unreadable' in e) {
        unreadable.push({ id: e.id, error: e.unreadable });
        continue;
      }
      if (opts.json) {
        out.write(`${count ? ',' : ''}\n${JSON.stringify(e, null, 2).replace(/^/gm, '    ')}`);
      } else {
        // Postfix's mailq marks a held message with `!` after its id.
        out.write(`${e.id}${e.held ? '!' : ''}  ${String(e.size).padStart(8)}  ${e.receivedAt}  <${e.sender}>  attempts ${e.attempts}, next ${e.nextAttemptAt}\n`);
        for (const r of e.pending) out.write(`    ${r.address}${r.lastError ? `\n      (${r.lastError})` : ''}\n`);
        if (e.done) out.write(`    (${e.done} recipient${e.done === 1 ? '' : 's'} done)\n`);
      }
      count++;
      if (e.held) held++;
      // A turn of the event loop after each chunk: the reads of journal records settle without one, and a
      // reader that left (`| head`) is told (EPIPE, see main.ts) only in one.
      if (out.flushed) await new Promise((resolve) => setImmediate(resolve));
    }
    if (opts.json) {
      out.write(`${count ? '\n  ' : ''}],\n  "unreadable": ${JSON.stringify(unreadable, null, 2).replace(/\n/g, '\n  ')}\n}\n`);
    } else if (!count && !unreadable.length) {
      out.write('Mail queue is empty\n');
    } else {
      for (const u of unreadable) out.write(`${u.id}  UNREADABLE: ${u.error}\n`);
      out.write(`-- ${count} message${count === 1 ? '' : 's'}${held ? `, ${held} held (!)` : ''}${unreadable.length ? `, ${unreadable.length} unreadable` : ''}\n`);
    }
    out.flush();
    return unreadable.length ? 1 : 0;
  });
}

/** Text for stdout: on a terminal, the control characters of what clients and next hops chose shown, not acted on. */
function forTerminal(text: string): string | Buffer {
  return process.stdout.isTTY ? terminalSafe(Buffer.from(text)) : text;
}

/** stdout in chunks of about 64 KiB (a write per line of a 100,000-message listing was as many system calls). */
class ChunkedOutput {
  #parts: string[] = [];
  #length = 0;
  /** A chunk went out since the last look. */
  #flushed = false;

  get flushed(): boolean {
    const was = this.#flushed;
    this.#flushed = false;
    return was;
  }

  write(text: string): void {
    this.#parts.push(text);
    this.#length += text.length;
    if (this.#length >= 64 * 1024) this.flush();
  }

  flush(): void {
    if (!this.#parts.length) return;
    this.#flushed = true;
    process.stdout.write(forTerminal(this.#parts.join('')));
    this.#parts = [];
    this.#length = 0;
  }
}

/**
 * One message, as Postfix's postcat shows it: the envelope and its delivery state, then the message
 * (`--envelope`: without it). `--json`: the envelope and state as JSON (`--message` adds the message).
 */
export function queueShowCommand(listed: string, opts: { config?: string; message?: boolean; json?: boolean; envelope?: boolean }): Promise<number> {
  const id = unmarked(listed);
  return guarded(async () => {
    if (!checkId(id)) return 1;
    const { spool, deliveryOn } = spoolAndConfig(opts, 'read');
    try {
      const envelope = await spool.readEnvelope(id);
      // Made due by `queue retry|release`, its attempt not yet made (or no server runs): due since then.
      const requested = await spool.readDueRequest(id);
      if (requested !== null && Date.parse(requested) < Date.parse(envelope.nextAttemptAt)) envelope.nextAttemptAt = requested;
      const hold = await spool.readHold(id);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ ...envelope, held: hold }, null, 2)}\n`);
        if (opts.message) {
          const message = await spool.readMessage(id);
          // The bytes as spooled, as without --json: decoded as UTF-8, an 8-bit message's other bytes became U+FFFD.
          process.stdout.write('\n');
          process.stdout.write(process.stdout.isTTY ? terminalSafe(message) : message);
        }
        return 0;
      }
      const message = opts.envelope ? null : await spool.readMessage(id);
      // Clients chose much of it (HELO name, certificate subject, a next hop's reply): on a terminal, its controls shown.
      process.stdout.write(forTerminal(formatMessageReport(envelope, hold, deliveryOn)));
      if (message) {
        process.stdout.write(`*** MESSAGE CONTENTS ${id} ***\n`);
        // The bytes as spooled (CRLF, 8-bit), as postcat prints them; on a terminal, its control characters shown.
        process.stdout.write(process.stdout.isTTY ? terminalSafe(message) : message);
        process.stdout.write(`${message.length && message.at(-1) !== 0x0a ? '\n' : ''}*** END OF MESSAGE ${id} ***\n`);
      }
      return 0;
    } catch (err) {
      return notFound(id, err);
    }
  });
}

export interface SelectionOptions extends MessageFilter { config?: string }
export type QueueAction = 'retry' | 'delete' | 'hold' | 'release';

/** What each action says of the messages it changed, and of those it found already so. */
const SAID: Record<QueueAction, { done: string; unchanged: (id: string) => string }> = {
  retry: { done: 'due now', unchanged: (id) => `on hold, left as it is (postern queue release ${id})` },
  delete: { done: 'deleted', unchanged: () => '' },
  hold: { done: 'placed on hold', unchanged: () => 'already on hold' },
  release: { done: 'released from hold (due now)', unchanged: () => 'not on hold' },
};

/**
 * `queue retry|delete|hold|release`: the ids given (`-` reads more from stdin, one per line, as
 * postsuper), or those a selection picks (`--all`, `--from`, `--to`, `--certificate`). Unknown ids are named on stderr
 * (exit status 1); the others are still done. Each change is recorded for the server's log.
 */
export function queueActionCommand(op: QueueAction, ids: string[], opts: SelectionOptions): Promise<number> {
  return guarded(async () => {
    const filtered = !!opts.all || opts.from !== undefined || opts.to !== undefined || opts.certificate !== undefined;
    if (filtered === (ids.length > 0)) {
      process.stderr.write(`postern: queue ${op} needs message ids, or --all, --from, --to or --certificate (not both)\n`);
      return 1;
    }
    // A certificate's SHA-256 fingerprint or its key's (the pin), in any of the spellings pins take.
    const certificate = opts.certificate === undefined ? undefined : normalizePin(opts.certificate);
    if (certificate === null) {
      process.stderr.write(`postern: --certificate ${JSON.stringify(opts.certificate)}: not a SHA-256 fingerprint or pin (hex, colon hex or base64)\n`);
      return 1;
    }
    const given = (ids.includes('-') ? [...ids.filter((i) => i !== '-'), ...(await readStdin()).split(/\s+/).filter(Boolean)] : ids).map(unmarked);
    if (given.filter((i) => !checkId(i)).length) return 1;
    const spools = spoolOf(opts, 'change');
    let targets = filtered ? await selectMessages(spools, { ...opts, certificate }) : given;
    if (filtered && (op === 'hold' || op === 'release')) {
      // A selection holds what is not held yet and releases what is held, quietly passing over the rest.
      const held = new Set(await spools.heldIds());
      targets = targets.filter((t) => held.has(t) === (op === 'release'));
    }
    const reserveBefore = spools.reserve.state;
    const outcome = await act(spools, op, targets);
    // Done either way: said so below; a record that may be lost is said too, and fails the command.
    const unrecorded = await evenWhenFull(spools, () => recordQueueOperation(spools.root, op, outcome.changed)).then(() => null, (err: Error) => err.message);
    if (reserveBefore !== spools.reserve.state) {
      process.stderr.write(`postern: the disk is full: the spool's reserve (${spools.reserve.path}) was released for this change; the server refuses new mail (452 4.3.1) until it has made the reserve again, once there is room\n`);
    }
    const n = outcome.changed.length;
    if (op === 'delete') for (const id of outcome.changed) process.stdout.write(`${id}: deleted\n`);
    else process.stdout.write(`${n} message${n === 1 ? '' : 's'} ${SAID[op].done}${n ? `: ${outcome.changed.join(' ')}` : ''}\n`);
    for (const u of outcome.unchanged) process.stderr.write(`postern: ${u}: ${SAID[op].unchanged(u)}\n`);
    for (const m of outcome.missing) process.stderr.write(`postern: ${m}: no such message in the queue${filtered ? ' (finished meanwhile)' : ''}\n`);
    if (unrecorded) {
      process.stderr.write(`postern: queue ${op} is done, but its record for the server's log (who did it) may be lost: ${unrecorded}\n`);
      return 1;
    }
    return outcome.missing.length && !filtered ? 1 : 0;
  });
}

async function act(spools: SpoolSet, op: QueueAction, targets: string[]): Promise<ActionOutcome> {
  switch (op) {
    case 'hold': return holdMessages(spools, targets, { at: new Date().toISOString(), by: operator() });
    case 'release': return releaseMessages(spools, targets);
    case 'retry': {
      const out: ActionOutcome = { changed: [], unchanged: [], missing: [] };
      out.changed = await retryMessages(spools, targets, out.unchanged, out.missing);
      return out;
    }
    case 'delete': {
      const out: ActionOutcome = { changed: [], unchanged: [], missing: [] };
      for (const id of targets) (await deleteMessage(spools, id) ? out.changed : out.missing).push(id);
      return out;
    }
  }
}

async function readStdin(): Promise<string> {
  let text = '';
  for await (const chunk of process.stdin) text += String(chunk);
  return text;
}
