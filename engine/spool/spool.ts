/**
 * The durable spool; the SMTP side says 250 only once a message is in it. A message up to 1 MiB goes to
 * the group-committed journal (journal.ts): one record, durable with everyone else's in the same flush.
 * A larger one is streamed to `incoming/<id>.part`, fdatasynced, renamed to `queue/<id>.msg` and the queue
 * directory synced; whatever a crash leaves in incoming/ was never acknowledged and is removed at startup. Until that
 * sync has succeeded `incoming/<id>.committing` says so, and the queue process does not take the message (its sync may
 * still fail, and the client, refused, send it again): a rename is seen before it is durable.
 * (Files are created outside queue/ because creating one waits for a running sync of its directory.)
 * Either way the bytes are the same: message, envelope, footer (message-file.ts). Delivery bookkeeping
 * that changes later lives in `queue/<id>.state` (replaced atomically), never in the message; a message
 * `postern queue hold` put on hold has a `queue/<id>.held` beside it (who, when), which the queue runner
 * never delivers, and one `postern queue retry|release` made due a `queue/<id>.due`, until the attempt the runner
 * made for it has ended (the command never rewrites the state the runner keeps). `rescan` in the root is rewritten by
 * `postern queue retry|delete|hold|release` so a running queue runner re-reads every state.
 */
import { closeSync, existsSync, fdatasync, fstatSync, openSync, read, readSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { link, mkdir, open, readdir, rename, rm, stat, unlink, readFile, writeFile } from 'node:fs/promises';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { join } from 'node:path';
import { DirectorySyncer, isLeftoverTemporary, temporaryPath, writeFileAtomic } from './fsync.ts';
import { encodeTrailer, parseLayout, readLayout } from './message-file.ts';
import { checkState, type SpoolEnvelope, type SpoolHold, type SpoolState } from './envelope.ts';
import { Journal, type JournalDamage } from './journal.ts';
import { DEFAULT_SYNC_DEADLINE_MS, SyncWatch, type SyncDeadline } from './sync-deadline.ts';
import { lockHolder } from './data-dir-lock.ts';
import { FreeSpace } from './free-space.ts';
import { SpoolReserve } from './reserve.ts';
import type { Logger } from '../logging/logger.ts';

const ID_PATTERN = /^[0-9a-z]{8,32}$/;
/** Message files up to this size are read for delivery without the thread pool. */
const SYNC_READ_BYTES = 256 * 1024;
/** A reader's view of a long journal reads about this much before it yields to the event loop. */
const READ_STEP_BYTES = 4 * 1024 * 1024;
/** Messages up to this size (with envelope) go to the journal; larger ones get a file of their own. */
const JOURNAL_MAX_BYTES = 1024 * 1024;
/**
 * What a writer past its spool's memory bound (receivingMemoryBytes) still gathers before it writes to its file:
 * writing each chunk at once cost a system call per chunk, and a chunk is a line when a client sends dot-stuffed
 * lines (`..`), so a message of them cost a write per line. A few KiB per writer stays within "the chunk each is reading".
 */
const OVER_BOUND_GATHER_BYTES = 4 * 1024;

/** One message found by Spool.scan(); `dueRequested`: `postern queue retry|release` asked for an attempt now (requestAttempt). */
export interface ScanEntry { id: string; hasState: boolean; held: boolean; dueRequested: boolean }

/** How long a hold may wait for its message's commit (a data script's hold is written first) before a scan takes it for left over. */
const HOLD_BEFORE_COMMIT_GRACE_MS = 10 * 60_000;
/** Due requests requestAttempts writes at once: enough to keep the thread pool's fsyncs busy, few open files. */
const REQUESTS_AT_ONCE = 16;
/** What a refusal of a bookkeeping write (a state, a due request) says: the caller keeps it and writes it again. */
const NOT_RECORDED = 'not recorded yet, written again once the disk answers';

export class Spool {
  readonly root: string;
  readonly queueDir: string;
  readonly incomingDir: string;
  readonly journalDir: string;
  /** Free space of the spool's filesystem (new mail is refused below `spool.minFreeBytes`). */
  readonly freeSpace: FreeSpace;
  /** How long a sync may take before its message is refused (`spool.syncDeadlineMs`: the server sets it, and at reloads). */
  readonly syncDeadline: SyncDeadline;
  /**
   * The syncs that may refuse their write at the deadline: a large message's file, a hold, a delivery state, a due
   * request (sync-deadline.ts). Shared by the spools the queue process writes (SpoolSet): a hung state write of any
   * of them is then one held thread of libuv's pool, not one per spool.
   */
  readonly syncs: SyncWatch;
  /** Room kept for the queue's bookkeeping on a full disk (reserve.ts); the queue runner keeps and uses it. */
  readonly reserve: SpoolReserve;
  readonly #dirSync: DirectorySyncer;
  /** The server's journal (after init()). */
  #journal: Journal | null = null;
  #logger: Logger | null = null;
  /** A reader's view of the journal, read again on every call so it is never stale. */
  #view: Journal | null = null;
  /**
   * A reader that reports the damage its view finds (`readerLogger`): for a spool no process writes, whose
   * writer would report it at its start (a worker spool a server with more workers left).
   */
  readonly #readerLogger: Logger | null;
  /** Entries of the view's damage already reported. */
  #damageReported = 0;

  /** Size at which the journal starts a new segment (default: the journal's). */
  readonly #segmentBytes: number | undefined;
  /** Bytes of messages being received that their writers hold in memory now (see create()). */
  heldBytes = 0;
  /** Messages with a file of their own whose commit in this process has renamed it into queue/ and not yet synced that. */
  readonly filesCommitting = new Set<string>();

  /**
   * `journalSegmentBytes`: smaller segments for a spool another process reads as it grows (a worker's:
   * the queue process reopens the journal to see new records, and reopening reads every segment).
   * `reserve`: the data folder's reserve file (default `<root>/reserve`): a worker's spool is refused new
   * mail while the queue runner uses it.
   */
  constructor(root: string, opts: { journalSegmentBytes?: number; reserve?: string; readerLogger?: Logger; syncs?: SyncWatch } = {}) {
    this.syncs = opts.syncs ?? new SyncWatch({ ms: DEFAULT_SYNC_DEADLINE_MS });
    this.syncDeadline = this.syncs.deadline;
    this.#segmentBytes = opts.journalSegmentBytes;
    this.#readerLogger = opts.readerLogger ?? null;
    this.root = root;
    this.queueDir = join(root, 'queue');
    this.incomingDir = join(root, 'incoming');
    this.journalDir = join(root, 'journal');
    this.reserve = new SpoolReserve(opts.reserve ?? join(root, 'reserve'));
    this.freeSpace = new FreeSpace(root, this.reserve.path);
    this.#dirSync = new DirectorySyncer(this.queueDir);
  }

  /**
   * For the server: recover the journal and clean up what a crash left. Other users only read. Journal
   * bytes that are not an intact record are kept aside and logged (`logger`), as errors unless they are
   * the torn end of the newest segment.
   */
  async init(opts: { logger?: Logger } = {}): Promise<{ removedOrphans: number; damage: readonly JournalDamage[] }> {
    await mkdir(this.queueDir, { recursive: true, mode: 0o700 });
    await mkdir(this.incomingDir, { recursive: true, mode: 0o700 });
    await mkdir(this.journalDir, { recursive: true, mode: 0o700 });
    this.#logger = opts.logger ?? null;
    this.#journal?.close();
    this.#journal = Journal.open(this.journalDir, { writable: true, segmentBytes: this.#segmentBytes, syncDeadline: this.syncDeadline });
    const logger = opts.logger;
    // Once per change, not per refused client: the kernel's own line (dmesg) says why it went read-only.
    if (logger) this.freeSpace.onReadOnly = (readOnly) => readOnly
      ? logger.error({ spool: this.root }, `spool: the filesystem of ${this.root} is read-only (EROFS; after an I/O error ext4 remounts read-only, see dmesg): new mail is refused (451 4.3.0) until it is writable again`)
      : logger.warn({ spool: this.root }, `spool: the filesystem of ${this.root} is writable again: new mail is taken again`);
    this.freeSpace.refreshSync();
    for (const d of this.#journal.damage) if (opts.logger) logDamage(opts.logger, d);
    let removedOrphans = 0;
    for (const name of await readdir(this.incomingDir)) {
      await rm(join(this.incomingDir, name), { force: true });
      removedOrphans++;
    }
    const names = new Set(await readdir(this.queueDir));
    const journal = this.#journal;
    for (const name of names) {
      // Never acknowledged: half-written messages, temporary files; state, a hold or a due request without a message.
      const beside = /^(.*)\.(state|held|due)$/.exec(name)?.[1];
      const request = asideDueRequestOf(name);
      if (request && isLeftoverWrite(name) && (names.has(`${request.id}.msg`) || journal.has(request.id))) {
        await this.#putBackDueRequest(name, request.file);
        continue;
      }
      const orphan = name.endsWith('.part') || isLeftoverWrite(name)
        || (beside !== undefined && !names.has(`${beside}.msg`) && !journal.has(beside));
      if (orphan) {
        await rm(join(this.queueDir, name), { force: true });
        removedOrphans++;
      }
    }
    for (const name of names) {
      const id = name.endsWith('.msg') ? name.slice(0, -4) : null;
      if (id === null || names.has(`${id}.state`) || journal.has(id) || !(await this.#isMoveLeftover(id))) continue;
      await this.#removeMoveLeftover(id);
      removedOrphans++;
    }
    return { removedOrphans, damage: this.#journal.damage };
  }

  /**
   * How long (ms) the oldest sync past its deadline (the journal's flush, a message file's, a hold's) has waited
   * without returning, or null: while one hangs, the disk cannot confirm any write of this spool, and new mail is
   * refused before it is sent (engine/smtp/runtime.ts).
   */
  /**
   * Settles once the writes bounded by the spool's sync deadline (a delivery state, a due request, a removal) are
   * confirmed again: every one past the deadline has returned. null while none is past its deadline.
   */
  writesConfirmed(): Promise<void> | null { return this.syncs.answered(); }

  unconfirmedFor(now = performance.now()): number | null {
    const since = Math.min(this.#journal?.hungSince() ?? Infinity, this.syncs.hungSince ?? Infinity);
    return since === Infinity ? null : now - since;
  }

  /** Time-ordered, unguessable queue id. */
  newId(): string {
    return timePrefix() + randomHex5();
  }

  static isId(id: string): boolean { return ID_PATTERN.test(id); }

  messagePath(id: string): string { return join(this.queueDir, `${id}.msg`); }
  statePath(id: string): string { return join(this.queueDir, `${id}.state`); }
  heldPath(id: string): string { return join(this.queueDir, `${id}.held`); }
  dueRequestPath(id: string): string { return join(this.queueDir, `${id}.due`); }
  /** Made before a message file's rename into queue/, removed once that is durable (see the top of this file). */
  committingPath(id: string): string { return join(this.incomingDir, `${id}.committing`); }

  /**
   * A message file renamed into queue/ whose folder is not synced yet, by this process or by the live process that
   * writes this spool (its lock says it runs: a writer killed meanwhile left a message its next start keeps, and so
   * does the queue). Rare: the marker exists only during a large message's commit.
   */
  #commitUnderWay(id: string): boolean {
    return this.filesCommitting.has(id) || (existsSync(this.committingPath(id)) && lockHolder(this.root) !== null);
  }

  /**
   * Start writing a message (after init()). `maxHeldBytes`: while the writers of this spool hold more than this
   * in memory together (heldBytes), this one writes what it is given to the message's own file at once, so the
   * memory of the messages being received stays bounded however many clients send at the same time.
   */
  create(id: string, maxHeldBytes = Infinity): SpoolWriter {
    return new SpoolWriter(this, id, this.#dirSync, this.#journal, maxHeldBytes);
  }

  /** Close the journal's files (the server is stopping). */
  close(): void {
    this.#journal?.close();
    this.#journal = null;
    this.#view?.close();
    this.#view = null;
  }

  /**
   * The server's journal, or for a reader (`postern queue`, the queue runner of another process's spool)
   * the journal as it is on disk now. A reader's view that already knows `id` is used as it is (records
   * never change), the done list of its segment read again; otherwise it reads what the writer appended since
   * its last look, not every segment again (the queue process looks at each new message of every worker:
   * reading the whole journal each time made its cost grow with the queue, and a long queue held its event loop
   * until the watchdog killed it).
   */
  #readJournal(id?: string): Journal | null {
    // A message known already: its segment's done list first, so that one `postern queue delete` marked done since
    // the last look is not read, delivered, kept or moved out of the journal (into a file that would bring it back).
    if (this.#journal) {
      if (id !== undefined) this.#journal.refreshDoneOf(id);
      return this.#journal;
    }
    if (id !== undefined && this.#view?.has(id)) {
      this.#view.refreshDoneOf(id);
      return this.#view;
    }
    const view = this.#openView();
    // What was appended since the last look; a message not found there is looked for everywhere.
    if (view && !view.catchUp(0) && (id === undefined || !view.has(id))) view.catchUp();
    this.#reportDamage();
    return view;
  }

  /**
   * The journal as it is on disk now, for a listing: a reader's view catches up in steps, yielding to the
   * event loop between them, so a first look at a long queue does not hold the process (its watchdog takes
   * an event loop stuck for a second for a hang).
   */
  async #currentJournal(): Promise<Journal | null> {
    if (this.#journal) {
      this.#journal.refresh(); // messages `postern queue delete` removed
      return this.#journal;
    }
    const view = this.#openView();
    while (view && !view.catchUp(READ_STEP_BYTES)) await new Promise((resolve) => setImmediate(resolve));
    this.#reportDamage();
    return view;
  }

  /** A reporting reader's: what its view found since the last look that is not an intact record (see #readerLogger). */
  #reportDamage(): void {
    const damage = this.#view?.damage ?? [];
    if (!this.#readerLogger) return;
    for (; this.#damageReported < damage.length; this.#damageReported++) {
      logDamage(this.#readerLogger, damage[this.#damageReported]!, `no process of this server writes ${this.root}: the segment is kept`);
    }
  }

  /** A reader's view of the journal (read only once it catches up), made when the journal exists. */
  #openView(): Journal | null {
    if (!this.#view && existsSync(this.journalDir)) this.#view = Journal.openReader(this.journalDir);
    return this.#view;
  }

  /** The envelope, with the latest delivery state applied (`withState: false`: as accepted). */
  async readEnvelope(id: string, opts: { withState?: boolean } = {}): Promise<SpoolEnvelope> {
    const withState = opts.withState ?? true;
    const record = this.#readJournal(id)?.read(id);
    if (record) {
      const { envelope } = parseLayout(record, `${this.journalDir} (message ${id})`);
      const state = withState ? await this.readState(id) : null;
      return state ? { ...envelope, ...state } : envelope;
    }
    const handle = await open(this.messagePath(id), 'r');
    try {
      const { envelope } = await readLayout(handle, this.messagePath(id));
      const state = withState ? await this.readState(id) : null;
      return state ? { ...envelope, ...state } : envelope;
    } finally {
      await handle.close();
    }
  }

  /** The message bytes (Received header + message as received), without the envelope trailer. */
  async readMessage(id: string): Promise<Buffer> {
    const record = this.#readJournal(id)?.read(id);
    if (record) return record.subarray(0, parseLayout(record, `${this.journalDir} (message ${id})`).messageBytes);
    const handle = await open(this.messagePath(id), 'r');
    try {
      const { messageBytes } = await readLayout(handle, this.messagePath(id));
      const buf = Buffer.alloc(messageBytes);
      await handle.read(buf, 0, messageBytes, 0);
      return buf;
    } finally {
      await handle.close();
    }
  }

  /**
   * For delivery: the envelope with its state and the message bytes, from one read. Throws if the bytes no
   * longer match the SHA-256 taken when a message file was written (the journal checks its records' CRC-32). A small file is read
   * synchronously (it is normally still in the page cache: cheaper than four thread-pool round trips);
   * `hasState: false` skips looking for a state file the caller knows is not there.
   */
  async readForDelivery(id: string, opts: { hasState?: boolean } = {}): Promise<{ envelope: SpoolEnvelope; message: Buffer }> {
    const record = this.#readJournal(id)?.read(id);
    const file = record ? `${this.journalDir} (message ${id})` : this.messagePath(id);
    const data = record ?? await readMessageFile(file);
    const { envelope, messageBytes } = parseLayout(data, file);
    const message = data.subarray(0, messageBytes);
    if (envelope.sha256 && createHash('sha256').update(message).digest('hex') !== envelope.sha256) {
      throw new Error(`${file}: message damaged (SHA-256 mismatch)`);
    }
    const state = opts.hasState === false ? null : await this.readState(id);
    return { envelope: state ? { ...envelope, ...state } : envelope, message };
  }

  /**
   * Moves a message out of the journal into a file of its own (`<id>.msg`, its SHA-256 in the envelope). A journal
   * segment is deleted only once every record in it is done, so one message deferred for days kept a whole
   * segment (up to 32 MB of mail delivered long ago) on disk, and during an outage of one destination every
   * segment written meanwhile, until those messages expired. The file is on disk (synced, renamed into place,
   * folder synced) before the record is marked done: at every moment one copy is. A crash between the two leaves
   * both: scan() and list() name the message once, its journal copy is read first, and remove() removes both.
   * Only a message with a state file (attempted) moves: removed meanwhile (`postern queue delete` from another
   * process), its state file is gone once its removal is done, and the file just made goes too (see remove()); a
   * mover killed before it saw that leaves a file marked movedFromJournal without a state file, which init() and
   * scan() take for removed (see #isMoveLeftover), never for a message not yet attempted.
   * False when nothing moved (not in the journal, not attempted, or removed meanwhile). Bounded by the spool's sync
   * deadline as a state write is: its syncs on a disk that stopped answering held the attempt that made it, its place
   * among those in flight and a thread of libuv's pool, unseen (/readyz 200); two such moves with `concurrency: 1` and
   * the queue process attempted nothing more. Past the deadline it is refused (the message stays in the journal) and
   * goes on: a crash at any point of it is one it survives.
   */
  async moveOutOfJournal(id: string): Promise<boolean> {
    let moved = false;
    await this.syncs.within(`the move of message ${id} out of the journal of ${this.root}`, async () => { moved = await this.#moveOutOfJournal(id); },
      'it stays in the journal, moved at a later deferral');
    return moved;
  }

  async #moveOutOfJournal(id: string): Promise<boolean> {
    const journal = this.#readJournal(id);
    const record = journal?.read(id);
    if (!journal || !record || !(await this.#hasState(id))) return false;
    const { envelope, messageBytes } = parseLayout(record, `${this.journalDir} (message ${id})`);
    const message = record.subarray(0, messageBytes);
    const sha256 = envelope.sha256 ?? createHash('sha256').update(message).digest('hex');
    await writeFileAtomic(this.messagePath(id), Buffer.concat([message, encodeTrailer({ ...envelope, sha256, movedFromJournal: true })]));
    await journal.markDoneDurably(id);
    if (await this.#hasState(id)) return true;
    await unlink(this.messagePath(id)).catch(ignoreMissing);
    await this.#dirSync.sync();
    return false;
  }

  #hasState(id: string): Promise<boolean> {
    return stat(this.statePath(id)).then(() => true, (err: NodeJS.ErrnoException) => { ignoreMissing(err); return false; });
  }

  /**
   * A message file without a state file that a move out of the journal wrote: a removal (`postern queue delete`, in
   * another process) took the state file away between the move's check and its rename, and the mover was killed
   * before it saw that and removed the file. Deleted, not a message never attempted (see movedFromJournal).
   */
  async #isMoveLeftover(id: string): Promise<boolean> {
    let handle;
    try {
      handle = await open(this.messagePath(id), 'r');
    } catch (err) {
      ignoreMissing(err as NodeJS.ErrnoException);
      return false;
    }
    try {
      const { envelope } = await readLayout(handle, this.messagePath(id));
      return envelope.movedFromJournal === true && !(await this.#hasState(id));
    } catch {
      return false; // unreadable: left to delivery, which reports it
    } finally {
      await handle.close();
    }
  }

  /** Remove a move's leftover (see #isMoveLeftover). */
  async #removeMoveLeftover(id: string): Promise<void> {
    await unlink(this.messagePath(id)).catch(ignoreMissing);
    await this.#dirSync.sync();
  }

  /** Ask a running queue runner to re-read every message's state (after `postern queue retry`). */
  async requestRescan(): Promise<void> {
    await writeFile(join(this.root, 'rescan'), `${Date.now()} ${randomBytes(4).toString('hex')}\n`, { mode: 0o600 });
  }

  /** Changes whenever requestRescan() ran. */
  rescanStamp(): Promise<string> {
    return readFile(join(this.root, 'rescan'), 'utf8').catch(() => '');
  }

  /** Whether a notice spooled here (create()) is still in the queue: has(), as this spool is its own home (SpoolSet). */
  hasNotice(id: string): Promise<boolean> { return this.has(id); }

  /**
   * Whether a message is still in the queue. Only ENOENT is "not there": another failure of the look (EIO, out of
   * descriptors) is thrown. Taken for "gone", a stat the disk failed made the queue runner take the message for
   * deleted during its attempt: its failed recipients were not bounced, and a deferred one was removed from the spool.
   */
  async has(id: string): Promise<boolean> {
    if (this.#readJournal(id)?.has(id)) return true;
    return stat(this.messagePath(id)).then(() => true, (err: NodeJS.ErrnoException) => { ignoreMissing(err); return false; });
  }

  /**
   * The size of a message's own file (a large message's), before it is read: 0 for one in the journal (at most
   * JOURNAL_MAX_BYTES) or gone. The queue runner counts it against the bytes its attempts may hold in memory.
   */
  async fileBytes(id: string): Promise<number> {
    // The journal's index as it is (no refresh: readForDelivery, right after, does that; a done mark since changes no
    // size). One not seen yet is looked for as a file, and then found in neither: 0.
    if (this.#journal?.has(id) || this.#view?.has(id)) return 0;
    return stat(this.messagePath(id)).then((s) => s.size, () => 0);
  }

  /** Record delivery progress atomically (write temp, fsync, rename, fsync directory). */
  async updateState(id: string, state: SpoolState): Promise<void> {
    // Bounded as a message's sync is: a disk that stopped answering held the attempt (and a thread of libuv's pool) for
    // as long as it hung, unseen; enough such attempts took every thread, and the queue process stopped delivering.
    const path = this.statePath(id);
    await this.syncs.within(`the write of the delivery state ${path}`, () => this.#writeBeside(path, JSON.stringify(state)), NOT_RECORDED);
  }

  /**
   * Put a message on hold (`postern queue hold`): durable like a state file, and apart from it, so the
   * runner's own state writes never undo it. The queue runner does not attempt a held message.
   */
  async hold(id: string, hold: SpoolHold): Promise<void> {
    // A data script's hold is written before its message's commit: bounded as that is (sync-deadline.ts). One written
    // after its message was refused is left behind, harmless (its id is never used again), and removed later.
    await this.syncs.within(`the hold of message ${id}`, () => this.#writeBeside(this.heldPath(id), JSON.stringify(hold)));
  }

  /**
   * Ask for an attempt now (`postern queue retry|release`): a file of its own beside the state, as a hold is, which the
   * queue runner takes at its next scan. The command rewrote the state itself, from what it had read: an attempt that
   * recorded its outcome in between (a recipient delivered) was undone, and that recipient sent to again.
   */
  async requestAttempt(id: string): Promise<void> {
    const path = this.dueRequestPath(id);
    await this.syncs.within(`the write of ${path}`, () => this.#writeBeside(path, `${new Date().toISOString()}\n`), NOT_RECORDED);
  }

  /**
   * requestAttempt for many messages at once (`postern queue retry --all`): each request written, fsynced and renamed
   * into place as there, several at a time, then one directory sync for them all (not one per message: 50,000 of
   * them one after another took minutes). Once this resolves each request survives a power loss, as after
   * requestAttempt; a crash before leaves each message requested or not. Rejects with the first failure, once no
   * write of the call is still running or past the spool's sync deadline (a second call redoes them all).
   */
  async requestAttempts(ids: readonly string[]): Promise<void> {
    const at = `${new Date().toISOString()}\n`;
    for (let i = 0; i < ids.length; i += REQUESTS_AT_ONCE) {
      const written = await Promise.allSettled(ids.slice(i, i + REQUESTS_AT_ONCE).map((id) => {
        const path = this.dueRequestPath(id);
        return this.syncs.within(`the write of ${path}`, () => this.#writeBeside(path, at, false), NOT_RECORDED);
      }));
      const failed = written.find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
    }
    if (ids.length) await this.syncs.within(`the sync of ${this.queueDir}`, () => this.#dirSync.sync(), NOT_RECORDED);
  }

  /** When an attempt now was asked for (null: it was not, or the queue runner took the request). */
  async readDueRequest(id: string): Promise<string | null> {
    return readFile(this.dueRequestPath(id), 'utf8').then((t) => t.trim(), (err: NodeJS.ErrnoException) => { ignoreMissing(err); return null; });
  }

  /**
   * The requested attempt was made (not synced: a request seen again after a crash only makes it due once more).
   * With `made`, only while the request still says that (readDueRequest): not one made since.
   */
  async clearDueRequest(id: string, made?: string): Promise<void> {
    const path = this.dueRequestPath(id);
    if (made === undefined) {
      await unlink(path).catch(ignoreMissing);
      return;
    }
    // Taken aside by a rename (the file as it is at that instant), then looked at. Read first and then unlinked, a
    // request written between the two (`postern queue retry` again, in another process) went with it: lost.
    const aside = temporaryPath(path); // a leftover (killed meanwhile) is put back by the next scan (#putBackDueRequest)
    try {
      await rename(path, aside);
    } catch (err) {
      ignoreMissing(err as NodeJS.ErrnoException);
      return;
    }
    try {
      const text = await readFile(aside, 'utf8').then((t) => t.trim(), () => null);
      // Another request, made since the one taken: put back, unless a newer one still has been written since the rename.
      if (text !== made) {
        await link(aside, path).catch(async (err: NodeJS.ErrnoException) => {
          if (err.code !== 'EEXIST') await rename(aside, path); // no hard links here: put back over a newer one, as new
        });
      }
    } finally {
      await unlink(aside).catch(ignoreMissing);
    }
  }

  /**
   * `name`, a due request's file taken aside by clearDueRequest by a process killed before it looked at it, put back
   * as `file` (unless a request has been written since): it may hold a `postern queue retry` made during the attempt,
   * lost if removed as a temporary. At worst it is the request whose attempt was made: one attempt more, as a kill
   * before the request's removal made. (A `queue retry` killed before its rename leaves the same name: a request too.)
   */
  async #putBackDueRequest(name: string, file: string): Promise<void> {
    const aside = join(this.queueDir, name);
    await link(aside, join(this.queueDir, file)).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') await rename(aside, join(this.queueDir, file)).catch(() => undefined);
    });
    await unlink(aside).catch(() => undefined);
  }

  /**
   * A small file of the queue folder written whole and durably, through a temporary file named by its writer (see
   * scan()); on a full disk the temporary file of a failed try is removed, or each would fill it further.
   */
  async #writeBeside(path: string, text: string, syncFolder = true): Promise<void> {
    const tmp = temporaryPath(path);
    try {
      const handle = await open(tmp, 'w', 0o600);
      try {
        await handle.writeFile(text);
        await handle.datasync();
      } finally {
        await handle.close();
      }
      await rename(tmp, path);
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
    if (syncFolder) await this.#dirSync.sync();
  }

  /** Take a message off hold; false if it was not held. */
  async release(id: string): Promise<boolean> {
    try {
      await unlink(this.heldPath(id));
    } catch (err) {
      ignoreMissing(err as NodeJS.ErrnoException);
      return false;
    }
    await this.#dirSync.sync();
    return true;
  }

  /**
   * Whether a message is on hold: asked before each delivery attempt (one stat of a file that is
   * normally absent, in a directory the kernel has cached), so a hold counts from the moment it is made.
   */
  async isHeld(id: string): Promise<boolean> {
    // Not existsSync, which answers false to any failure: a look the disk failed let a held message be delivered.
    return statSync(this.heldPath(id), { throwIfNoEntry: false }) !== undefined;
  }

  /** Ids with a hold file (a message finished as it was held may leave one until the next start). */
  async heldIds(): Promise<string[]> {
    return (await readdir(this.queueDir)).filter((n) => n.endsWith('.held')).map((n) => n.slice(0, -5));
  }

  /** Who held a message and when (null: not held). */
  async readHold(id: string): Promise<SpoolHold | null> {
    try {
      return JSON.parse(await readFile(this.heldPath(id), 'utf8')) as SpoolHold;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      if (err instanceof SyntaxError) return { at: null, by: null }; // cut short: held all the same
      throw err;
    }
  }

  /**
   * Remove a finished message: the message first, so a crash in between leaves only an orphan state file.
   * `hasState: false`: the caller knows there is no state file to remove.
   */
  async remove(id: string, opts: { hasState?: boolean } = {}): Promise<void> {
    // Bounded as a state write is: its syncs (the done line's, the folder's) on a disk that stopped answering held the
    // attempt, its place among those in flight and a thread of libuv's pool; as many as there are places, and the
    // queue process attempted nothing more. Past the deadline the removal goes on, and the caller tries it again.
    await this.syncs.within(`the removal of message ${id} from ${this.root}`, () => this.#remove(id, opts), NOT_RECORDED);
  }

  async #remove(id: string, opts: { hasState?: boolean }): Promise<void> {
    const journal = this.#readJournal(id);
    if (opts.hasState === false) {
      // Nothing else records its progress: a done mark lost in a power cut only means delivering it again.
      if (journal?.markDone(id)) return;
      await unlink(this.messagePath(id)).catch(ignoreMissing);
      await this.#dirSync.sync();
      return;
    }
    // The state file names the recipients delivered in earlier attempts: the message's removal is on disk
    // before it goes, or a power cut between the two would bring the message back without it, to be sent to
    // every recipient again. (`postern queue delete` gets the same promise: a deleted message stays deleted.)
    const inJournal = (await journal?.markDoneDurably(id)) ?? false;
    // The file too: the message's own, or, beside its journal record, that of a move out of the journal cut short
    // between its file and its done mark (moveOutOfJournal).
    const fileRemoved = await unlink(this.messagePath(id)).then(() => true, (err: NodeJS.ErrnoException) => { ignoreMissing(err); return false; });
    if (fileRemoved || !inJournal) await this.#dirSync.sync();
    await unlink(this.statePath(id)).catch(ignoreMissing);
    await this.#dirSync.sync();
    // A move out of the journal by the queue process that renamed its file in after the unlink above (it checks
    // for the state file after its rename, so one of the two removes the file).
    if (inJournal) await unlink(this.messagePath(id)).then(() => this.#dirSync.sync(), ignoreMissing);
  }

  /**
   * Committed messages with whether they have a state file, from one directory read: a message without
   * one has never been attempted, so it is due now and its envelope need not be read to schedule it.
   * `held`: on hold (`postern queue hold`), not to be attempted. `tidy: false`: leave a hold its message
   * outlived where it is (`postern queue list` only looks).
   */
  async scan(opts: { tidy?: boolean } = {}): Promise<ScanEntry[]> {
    // The journal before the folder: a message moving out of the journal (moveOutOfJournal: file renamed in, then its
    // record marked done) is then seen in one or both, never in neither, as the other order could (a scan that read
    // the folder before the rename and the journal after the done mark missed it: `queue delete --all` left it).
    const journal = await this.#currentJournal();
    const names = new Set(await this.#queueNames());
    const out: ScanEntry[] = [];
    const entry = (id: string): ScanEntry => ({ id, hasState: names.has(`${id}.state`), held: names.has(`${id}.held`), dueRequested: names.has(`${id}.due`) });
    const inJournal = new Set(journal?.ids() ?? []);
    for (const id of inJournal) out.push(entry(id));
    for (const n of names) {
      if (!n.endsWith('.msg')) continue;
      const id = n.slice(0, -4);
      // Both a record and a file: a move out of the journal cut short (moveOutOfJournal). One message.
      if (!Spool.isId(id) || inJournal.has(id)) continue;
      // Not acknowledged yet: taken by the next scan once it is (or announced then).
      if (!names.has(`${id}.state`) && this.#commitUnderWay(id)) continue;
      // Never attempted, or what a removal racing a move left: the trailer says which (rare: a large message's first minutes).
      if (!names.has(`${id}.state`) && await this.#isMoveLeftover(id)) {
        if (opts.tidy !== false) await this.#removeMoveLeftover(id);
        continue;
      }
      out.push(entry(id));
    }
    // A hold its message outlived (an attempt under way when it was made finished the message): gone now, not
    // at the next start. A hold made by `postern queue hold` was made after its message was committed, which
    // has() sees, as it looks after the listing (the journal read above may be older than the hold); a data
    // script's hold is made just before its message is committed, so a recent one without its message is left
    // alone (its commit may be under way).
    const present = new Set(out.map((e) => e.id));
    for (const n of opts.tidy === false ? [] : names) {
      // A state or a due request its message outlived: a removal cut short by a kill after the message's done mark, a
      // due request made as the message finished. Gone now, not at its spool's writer's next start (a worker's may be
      // weeks later); has() looks after the listing, and an id is never used again.
      const of = /^(.*)\.(state|due)$/.exec(n)?.[1];
      // A look that fails keeps the file (the message may be there): tidied at a later scan.
      if (of !== undefined && !present.has(of) && !(await this.has(of).catch(() => true))) await unlink(join(this.queueDir, n)).catch(() => undefined);
      if (!n.endsWith('.held') || present.has(n.slice(0, -5))) continue;
      const path = join(this.queueDir, n);
      if (await this.#awaitsCommit(path) || await this.has(n.slice(0, -5)).catch(() => true)) continue;
      await unlink(path).catch(() => undefined);
    }
    // The temporary file of a state, a hold or a move out of the journal whose writer was killed before its rename
    // (named with the writer's pid): the queue process restarted, or a `postern queue` command killed. Nothing else
    // removed it (a worker clears them at its own start, which may be weeks later): one file per kill, and a move's
    // is a copy of the message.
    for (const n of opts.tidy === false ? [] : names) {
      if (!isLeftoverWrite(n)) continue;
      const request = asideDueRequestOf(n);
      if (request && present.has(request.id)) await this.#putBackDueRequest(n, request.file);
      else await unlink(join(this.queueDir, n)).catch(() => undefined);
    }
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** A data script's hold (made just before its message's commit) made lately: its message may not be committed yet. */
  async #awaitsCommit(holdPath: string): Promise<boolean> {
    try {
      const [made, text] = await Promise.all([stat(holdPath), readFile(holdPath, 'utf8')]);
      return Date.now() - made.mtimeMs < HOLD_BEFORE_COMMIT_GRACE_MS && (JSON.parse(text) as SpoolHold).script !== undefined;
    } catch {
      return false;
    }
  }

  /**
   * The names in queue/. The server's own spool whose folders were deleted while it ran (`rm -rf` of the
   * spool) makes them again, so that mail is taken, recorded and delivered again (the journal makes its
   * own, with its key, as it needs it); what they held is gone, and that is logged. Readers only report.
   */
  async #queueNames(): Promise<string[]> {
    try {
      return await readdir(this.queueDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !this.#journal) throw err;
    }
    for (const dir of [this.queueDir, this.incomingDir, this.journalDir]) await mkdir(dir, { recursive: true, mode: 0o700 });
    this.#logger?.error({ spool: this.root }, `spool: ${this.queueDir} was deleted while the server ran; the spool's folders are made again (messages that were in them are gone)`);
    return readdir(this.queueDir);
  }

  /** The delivery state alone (null when the message has none yet). */
  async readState(id: string): Promise<SpoolState | null> {
    try {
      const file = this.statePath(id);
      return checkState(JSON.parse(await readFile(file, 'utf8')), file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /** When a message was accepted, from its time-ordered id (ms since the epoch). */
  static idTime(id: string): number {
    return parseInt(id.slice(0, 9), 36);
  }

  /** Ids of committed messages, oldest first. */
  async list(): Promise<string[]> {
    const journal = await this.#currentJournal(); // before the folder: see scan()
    const names = await this.#queueNames();
    const files = names.filter((n) => n.endsWith('.msg')).map((n) => n.slice(0, -4)).filter((id) => Spool.isId(id));
    return [...new Set([...(journal?.ids() ?? []), ...files])].sort(); // one id for a move cut short (moveOutOfJournal)
  }
}

/**
 * Writes one message. Up to JOURNAL_MAX_BYTES it is only held in memory and committed as one journal
 * record, whose CRC-32 guards message and envelope. Past that it streams to its own file, hashed with
 * SHA-256 on the way (recorded in the envelope, checked before delivery): opening, writing and closing
 * are synchronous (they only touch the page cache, in incoming/, which is never synced, and cost less
 * CPU than thread-pool round trips); the syncs and the rename into queue/ wait for the disk or the
 * directory, so they go to the pool. What was written can be read back (read()) until the commit, and the
 * commit can replace one range of it (the data hook's header edits): in memory for a journal record; a
 * message with a file of its own is copied once more into a new file in incoming/ (page cache only), and
 * either way the one durable write is of the edited message. The bytes a writer holds count in its spool's
 * heldBytes; over the writer's maxHeldBytes it writes to its own file at once (see Spool.create()).
 */
export class SpoolWriter {
  readonly id: string;
  /** The spool's folders, for the paths of a message that gets a file of its own (most never do). */
  readonly #spool: Spool;
  readonly #dirSync: DirectorySyncer;
  readonly #journal: Journal | null;
  /** Only for a message that goes to a file of its own. */
  #hash: Hash | null = null;
  #fd: number | null = null;
  /** The message's own file in incoming/, named on first use: most messages go to the journal and never have one. */
  #part: string | null = null;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #bytes = 0;
  /** Bytes in the message's own file; the rest (#pending) follows them. */
  #flushed = 0;
  readonly #maxHeldBytes: number;

  constructor(spool: Spool, id: string, dirSync: DirectorySyncer, journal: Journal | null, maxHeldBytes: number) {
    this.id = id;
    this.#spool = spool;
    this.#dirSync = dirSync;
    this.#journal = journal;
    this.#maxHeldBytes = maxHeldBytes;
  }

  get bytes(): number { return this.#bytes; }

  get #partFile(): string { return this.#part ??= join(this.#spool.incomingDir, `${this.id}.part`); }

  write(chunk: Buffer): void {
    this.#bytes += chunk.length;
    this.#pending.push(chunk);
    this.#pendingBytes += chunk.length;
    // With the records committed and still waiting for the journal's flush: in memory as well until it ends.
    const held = (this.#spool.heldBytes += chunk.length) + (this.#journal?.unsettledBytes ?? 0);
    const limit = this.#fd === null && this.#journal ? JOURNAL_MAX_BYTES : 256 * 1024;
    // Past the memory bound: at once, into a file of its own; once it has one, a few KiB at a time (see OVER_BOUND_GATHER_BYTES).
    if (this.#pendingBytes >= limit || (held > this.#maxHeldBytes && (this.#fd === null || this.#pendingBytes >= OVER_BOUND_GATHER_BYTES))) this.#flush();
  }

  /** What this writer holds in memory no longer counts in its spool's heldBytes (written, handed on or dropped). */
  #release(): void {
    this.#spool.heldBytes -= this.#pendingBytes;
    this.#pendingBytes = 0;
  }

  /** Up to `length` bytes of what was written, from `offset` (fewer past the end). */
  read(offset: number, length: number): Buffer {
    const end = Math.min(this.#bytes, offset + length);
    if (end <= offset) return Buffer.alloc(0);
    if (offset >= this.#flushed) {
      // Within one chunk still in memory (the header section of a message that came in one piece): a view of it.
      let start = this.#flushed;
      for (const chunk of this.#pending) {
        const stop = start + chunk.length;
        if (offset < stop) {
          if (end <= stop) return chunk.subarray(offset - start, end - start);
          break;
        }
        start = stop;
      }
    }
    const out = Buffer.allocUnsafe(end - offset);
    let at = offset;
    if (at < this.#flushed) {
      const n = Math.min(end, this.#flushed) - at;
      for (let off = 0; off < n;) {
        const got = readSync(this.#fd!, out, off, n - off, at + off);
        if (got === 0) throw new Error(`${this.#partFile}: shorter than written`);
        off += got;
      }
      at += n;
    }
    let start = this.#flushed;
    for (const chunk of this.#pending) {
      if (at >= end) break;
      const stop = start + chunk.length;
      if (at < stop) {
        const piece = chunk.subarray(at - start, Math.min(chunk.length, end - start));
        piece.copy(out, at - offset);
        at += piece.length;
      }
      start = stop;
    }
    return out;
  }

  /**
   * Make the message and its envelope durable. Resolves only when they would survive a crash.
   * `replace`: the bytes [at, at + length) of the message become `bytes` first. The envelope's `size` is
   * set to the message's (the caller builds the envelope for this commit).
   */
  commit(envelope: SpoolEnvelope, replace?: { at: number; length: number; bytes: Buffer }): Promise<void> {
    if (this.#fd !== null || !this.#journal) return this.#commitFile(envelope, replace);
    // A journal record: no async function of its own (the journal's promise is the commit's).
    try {
      if (replace) this.#replacePending(replace.at, replace.length, replace.bytes);
      const chunks = this.#pending;
      this.#pending = [];
      this.#release();
      envelope.size = this.#bytes;
      chunks.push(encodeTrailer(envelope));
      return this.#journal.append(this.id, chunks);
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  /** The same for a message with a file of its own. */
  async #commitFile(envelope: SpoolEnvelope, replace?: { at: number; length: number; bytes: Buffer }): Promise<void> {
    if (replace && this.#fd === null) this.#replacePending(replace.at, replace.length, replace.bytes);
    else if (replace) await this.#rewrite(replace.at, replace.length, replace.bytes);
    this.#flush();
    const fd = this.#fd!;
    writeAll(fd, encodeTrailer({ ...envelope, size: this.#bytes, sha256: this.#hash!.digest('hex') }));
    // Past the deadline the commit fails; abort() (the caller's) then closes the file and removes it from incoming/.
    await this.#spool.syncs.within(`the write of message ${this.id}'s file`,
      () => new Promise<void>((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve()))));
    closeSync(fd);
    this.#fd = null;
    const path = this.#spool.messagePath(this.id);
    // Seen in queue/ from the rename on, durable only once the folder is synced: until then the queue does not take it.
    const marker = this.#spool.committingPath(this.id);
    closeSync(openSync(marker, 'w', 0o600));
    this.#spool.filesCommitting.add(this.id);
    try {
      await rename(this.#partFile, path); // on the pool: it waits for the queue directory
      try {
        await this.#spool.syncs.within(`message ${this.id}'s move into the queue folder`, () => this.#dirSync.sync());
      } catch (err) {
        // Not durable, so refused (the client sends again): the queue must not deliver this copy besides that one.
        await unlink(path).catch(() => undefined);
        throw err;
      }
    } finally {
      this.#spool.filesCommitting.delete(this.id);
      try { unlinkSync(marker); } catch { /* incoming/ is emptied at start */ }
    }
  }

  /**
   * Drop the message (refused, or the client left before the end of DATA), also after a commit that failed
   * once its file was closed (the move into queue/ refused): its file in incoming/ would stay until a restart.
   */
  abort(): void {
    this.#pending = [];
    this.#release();
    // Nothing left to read: read() would otherwise hand out an unfilled buffer of the old length (stale memory).
    this.#bytes = 0;
    this.#flushed = 0;
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
    if (this.#part === null) return; // never had a file of its own
    try { unlinkSync(this.#part); } catch (err) { ignoreMissing(err as NodeJS.ErrnoException); }
  }

  /** Replace a range of a message that is all in memory. */
  #replacePending(at: number, length: number, bytes: Buffer): void {
    const before = this.read(0, at);
    const after = this.read(at + length, this.#bytes);
    this.#pending = [before, bytes, after];
    this.#bytes = before.length + bytes.length + after.length;
    this.#spool.heldBytes += this.#bytes - this.#pendingBytes;
    this.#pendingBytes = this.#bytes;
  }

  /** Replace a range of a message that has a file of its own: a new file, written in order, takes its place. */
  async #rewrite(at: number, length: number, bytes: Buffer): Promise<void> {
    this.#flush();
    const old = { fd: this.#fd!, part: this.#partFile, bytes: this.#bytes };
    const part = join(this.#spool.incomingDir, `${this.id}.edited.part`);
    const fd = openSync(part, 'wx+', 0o600);
    const hash = createHash('sha256');
    const put = (b: Buffer): void => {
      hash.update(b);
      writeAll(fd, b);
    };
    try {
      await copyRange(old.fd, 0, at, put);
      put(bytes);
      await copyRange(old.fd, at + length, old.bytes, put);
    } catch (err) {
      closeSync(fd);
      try { unlinkSync(part); } catch { /* best effort: incoming/ is emptied at start */ }
      throw err;
    }
    closeSync(old.fd);
    try { unlinkSync(old.part); } catch (err) { ignoreMissing(err as NodeJS.ErrnoException); }
    this.#fd = fd;
    this.#part = part;
    this.#hash = hash;
    this.#bytes = old.bytes - length + bytes.length;
    this.#flushed = this.#bytes;
  }

  /** Write what is pending to the message's file (opened, and its hash started, on the first flush). */
  #flush(): void {
    this.#fd ??= openSync(this.#partFile, 'wx+', 0o600); // read too: read() and #rewrite() read it back
    this.#hash ??= createHash('sha256');
    const buffers = this.#pending;
    const bytes = this.#pendingBytes;
    this.#pending = [];
    this.#release();
    if (buffers.length === 0) return;
    // Joined: one hash update and one write, not one per chunk. A chunk is what the SMTP parser hands on, which is
    // a line when dot-stuffed lines follow one another: a system call per line, some 100 times a plain message's CPU.
    const joined = buffers.length === 1 ? buffers[0]! : Buffer.concat(buffers, bytes);
    this.#hash.update(joined);
    writeAll(this.#fd, joined);
    this.#flushed += joined.length;
  }
}

/** Hand the bytes [from, to) of the file `fd` to `put`, in order, read 256 KiB at a time on the thread pool. */
async function copyRange(fd: number, from: number, to: number, put: (b: Buffer) => void): Promise<void> {
  const buf = Buffer.allocUnsafe(256 * 1024);
  for (let at = from; at < to;) {
    const n = await new Promise<number>((resolve, reject) => read(fd, buf, 0, Math.min(buf.length, to - at), at, (err, got) => (err ? reject(err) : resolve(got))));
    if (n === 0) throw new Error('spool file shorter than written');
    put(buf.subarray(0, n)); // used at once: the buffer is reused
    at += n;
  }
}

function writeAll(fd: number, b: Buffer): void {
  for (let off = 0; off < b.length;) off += writeSync(fd, b, off);
}

/** An id's time part, the milliseconds in base 36: made once a millisecond (toString(36) is most of an id's cost). */
let prefixMs = -1;
let prefix = '';
function timePrefix(): string {
  const now = Date.now();
  if (now !== prefixMs) {
    prefixMs = now;
    prefix = now.toString(36).padStart(9, '0');
  }
  return prefix;
}

/** Random bytes are drawn 4 KB at a time and turned into hex at once: one getrandom call per 800 ids instead of one per id. */
let randomHex = '';
let randomAt = 0;
function randomHex5(): string {
  if (randomAt + 10 > randomHex.length) {
    randomHex = randomBytes(4000).toString('hex');
    randomAt = 0;
  }
  randomAt += 10;
  return randomHex.slice(randomAt - 10, randomAt);
}

/** A message file; a small one is read without the thread pool (it is normally still in the page cache). */
async function readMessageFile(file: string): Promise<Buffer> {
  const fd = openSync(file, 'r');
  try {
    const { size } = fstatSync(fd);
    if (size > SYNC_READ_BYTES) return await readFile(file);
    const data = Buffer.allocUnsafe(size);
    for (let off = 0; off < size;) {
      const n = readSync(fd, data, off, size - off, off);
      if (n === 0) throw new Error(`${file}: truncated while reading`);
      off += n;
    }
    return data;
  } finally {
    closeSync(fd);
  }
}

/**
 * A temporary file in queue/ whose write will never finish: its writer (temporaryPath names it) is gone, or it has an
 * older release's name, which does not say who writes it. One whose writer runs is not touched: a worker's start
 * removed the queue process's state file on its way to its rename, and that attempt's outcome went unrecorded.
 */
/** The due request whose temporary (temporaryPath: clearDueRequest's file taken aside, a request's write) `name` is. */
function asideDueRequestOf(name: string): { id: string; file: string } | null {
  const m = /^\.((.+)\.due)\.\d+\.[0-9a-f]{8}\.tmp$/.exec(name);
  return m && Spool.isId(m[2]!) ? { id: m[2]!, file: m[1]! } : null;
}

function isLeftoverWrite(name: string): boolean {
  return name.endsWith('.tmp') && (isLeftoverTemporary(name) || !name.startsWith('.'));
}

/** `kept`: where the bytes are (default: the quarantine copy, or the segment when the copy failed). */
function logDamage(logger: Logger, d: JournalDamage, kept = d.quarantine ? `kept in ${d.quarantine}` : 'could not be copied aside: the segment is kept'): void {
  const where = { segment: d.segment, offset: d.offset, bytes: d.length, quarantine: d.quarantine };
  if (d.tail && d.lastSegment) {
    logger.warn(where, `journal: unreadable record at the end of ${d.segment} (offset ${d.offset}), a write cut short by a crash, never acknowledged; ${kept}`);
  } else {
    logger.error(where, `journal: damaged record in ${d.segment} at offset ${d.offset} (${d.length} bytes) skipped, the records after it recovered; ${kept}`);
  }
}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== 'ENOENT') throw err;
}

