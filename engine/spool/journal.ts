/**
 * The group-committed journal that holds small messages. Each message is one record appended to the
 * active segment, `journal/<seq>.seg`; one fdatasync makes every record appended before it durable, so
 * messages accepted together share one disk flush instead of paying a file creation, a rename and two
 * syncs each. The records a flush makes durable are also written by it, in one pwritev: those appended
 * while the previous flush was in flight wait in memory until then (measured: the journal's write system
 * calls per message 1 → about 0.3, 25 → 12 µs of event-loop time per message). A message leaves the
 * journal when its id is appended to the segment's `<seq>.done`; that line is not synced when losing it in a
 * crash only means delivering the message again, and synced when it does not (markDoneDurably). A segment
 * whose records are all done is deleted.
 *
 * Record: `POSTERN-RECORD-V4 <id> <length> <crc32>\n` + <length> bytes (the same bytes as a `.msg` file)
 * + `\n`; the CRC-32 covers id and length as well as the bytes, and starts from the journal's secret key
 * (`journal/key`), so that a record a client hides in its message is never taken for one after damage
 * (segment-scan.ts). V3 records (the same, without the key), V2 records, whose CRC covers the bytes
 * alone, and V1 records, without one, are still read. A crash can leave a torn record at the end
 * of a segment that was being written; it was never acknowledged. Any other record that does not read
 * back (a damaged disk block) is skipped: the framing lets reading go on at the next intact record
 * (segment-scan.ts). Its bytes are kept in `quarantine/` and reported, never silently dropped.
 *
 * A record is acknowledged only after an fdatasync that covered it succeeded. After a failed write or
 * sync the segment is given up: Linux may have dropped its unwritten pages and reports a write-back
 * error to one fsync only, so nothing not yet acknowledged is trusted to it. The records of the flush
 * that failed are refused (the client gets a 4xx and sends again); every other record appended to it
 * and not yet acknowledged is written again to a fresh segment. A copy left behind in the old segment
 * is a duplicate: at start the later copy (the higher segment) wins.
 *
 * A reader in another process (the queue process reading a worker's journal) takes only acknowledged records: a
 * record is in the segment's file (and the page cache) from its write on, before the fdatasync that may still fail,
 * and a record the client was refused for (a 4xx, so it sends the message again) must not be delivered besides the
 * copy it sends. The writer keeps `<seq>.acked`, made before its segment, with the end of the records acknowledged so
 * far, rewritten (not synced: it only matters while this writer runs) before each flush's appends are acknowledged.
 * A writer's start removes the acked files of the segments it finds: after a crash every intact record counts, as
 * it does for the writer itself. No acked file (removed, or a segment of an older release): every record counts.
 *
 * The active segment is written with zeros ahead of its records, a megabyte at a time, and that region
 * synced in the background, through a file handle of its own (see Segment.zeroFd): a record then overwrites blocks the file already has, and its fdatasync
 * flushes only data, not the block allocation and file size an append makes the filesystem journal
 * (measured on ext4 here: 190 → 105 µs of CPU and 500 → 300 µs per fdatasync). Reading stops at the
 * zeros; the checksum catches a record whose pages reached the disk only in part.
 */
import { closeSync, existsSync, fdatasync, fsync, fsyncSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, statSync, unlinkSync, writeSync, writevSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { DirectorySyncer } from './fsync.ts';
import { notConfirmed, DEFAULT_SYNC_DEADLINE_MS, type SyncDeadline } from './sync-deadline.ts';
import { lockHolder } from './data-dir-lock.ts';
import { randomBytes } from 'node:crypto';
import { keyedRecordSeedFrom, MissingJournalKeyError, NewerRecordError, scanSegment } from './segment-scan.ts';

const HEADER = 'POSTERN-RECORD-V4';
/** The journal's secret key (see keyedRecordSeed): 64 hex digits. */
const KEY_FILE = 'key';
const KEY_PATTERN = /^[0-9a-f]{64}\n?$/;
/** Zeros are written this far ahead of the last record, this much at a time. */
const ZERO_AHEAD = 256 * 1024;
const ZEROS = Buffer.alloc(1024 * 1024);
/** A new segment is started once the active one is this large (by default). */
const SEGMENT_BYTES = 32 * 1024 * 1024;
const NEWLINE = Buffer.from('\n');
/** A reader's look at the first byte after the records it has read. */
const ONE_BYTE = Buffer.alloc(1);
/** An acked file: the end of the acknowledged records twice, 64-bit little-endian (a read torn by a rewrite differs). */
const ACKED_BYTES = 16;
/** Buffers per writev (Linux's IOV_MAX). */
const MAX_IOV = 1024;
/** How often a flush under way is looked at for that deadline. */
const STALL_CHECK_MS = 1000;

interface Segment {
  seq: number;
  path: string;
  donePath: string;
  fd: number;
  /**
   * A second handle on the file for the zeros written ahead and their syncs. Linux reports a write-back
   * error to one fsync per open file description: on a shared handle a sync of the zeros could take the
   * error that a sync of records needs to see.
   */
  zeroFd: number | null;
  doneFd: number | null;
  /** The writer's: its `<seq>.acked` (see the top of this file); null for a segment it did not make. */
  ackedFd: number | null;
  /** A reader's: the end of the acknowledged records, as the writer's acked file said last (Infinity: every record; -1: not read yet). */
  ackedEnd: number;
  /** The folder synced since this process first wrote to `.done` (its entry on disk, whoever made it); null: not yet. */
  doneEntry?: Promise<void> | null;
  /** Bytes of `.done` already applied to the index. */
  doneRead: number;
  /**
   * A reader's: ids of done lines read while records of this segment lay past the ones it took (see #readDone). A
   * record named here, once read, is not taken: its line, already read, would not be applied again.
   */
  doneEarly?: Set<string>;
  size: number;
  live: number;
  /** Still taking records. */
  active: boolean;
  /** A write or sync failed: nothing not yet acknowledged is trusted to this file. */
  failed: boolean;
  /** Damaged bytes in it could not be kept aside: never deleted. */
  pinned: boolean;
  /** The directory entry of a new segment must be durable before its first record is acknowledged. */
  entrySynced: boolean;
  /** Syncs in flight on this segment's file: it is not deleted until they finish. */
  syncing: number;
  /** Durable done marks (markDoneDurably) whose sync of the done list is in flight: its handle stays open until they end. */
  marking?: number;
  /** A reader's: left the view (#drop) while a durable mark was in flight; its files are closed when the last one ends. */
  dropped?: boolean;
  /** The file holds zeros (written ahead of the records) up to here. */
  zeroedTo: number;
  /** A reader's: the end of the last intact record read, where catchUp() reads on. */
  readTo: number;
  /** The file's inode (a reader sees a segment deleted and another made under its name). */
  ino: number;
  /** Records appended since the last write, and where the first of them goes. */
  unwritten: Buffer[];
  unwrittenAt: number;
}

/** Where a record's bytes are, their CRC-32 (null for a V1 record, which has none) and its seed (recordSeed). */
interface Location { segment: Segment; offset: number; length: number; crc: number | null; seed: number }

/** An append waiting for the flush that makes it durable. It keeps its bytes: it may have to be written again elsewhere. */
interface Waiter {
  id: string;
  /** The record is header, chunks, NEWLINE (not joined into one array: the segment's list takes them one by one). */
  header: Buffer;
  chunks: readonly Buffer[];
  bytes: number;
  headerBytes: number;
  length: number;
  crc: number;
  seed: number;
  segment: Segment;
  /** Refused at the deadline while its flush still hung: whatever that flush says later is not for it. */
  givenUp?: true;
  resolve(): void;
  reject(err: Error): void;
}

/** Bytes of a segment that are not an intact record, found when the journal was opened. */
export interface JournalDamage {
  segment: string;
  offset: number;
  length: number;
  /** No intact record follows: in the newest segment, the usual trace of a crash mid-write (never acknowledged). */
  tail: boolean;
  lastSegment: boolean;
  /** The file the bytes were copied to; null in a read-only journal, or when that failed (the segment is then kept). */
  quarantine: string | null;
}

export class Journal {
  readonly dir: string;
  readonly #writable: boolean;
  readonly #segmentBytes: number;
  readonly #index = new Map<string, Location>();
  readonly #segments = new Map<number, Segment>();
  readonly #dirSync: DirectorySyncer;
  readonly #damage: JournalDamage[] = [];
  #active: Segment | null = null;
  #nextSeq = 1;
  /** The secret the V4 checksums start from; null only in a read-only journal that never had one. */
  #key: string | null = null;
  /** crc32 of #key, and the key it is of (see keyedRecordSeedFrom). */
  #keyCrc: { key: string; crc: number } | null = null;
  #waiting: Waiter[] = [];
  /**
   * Bytes of the records appended and not yet acknowledged or refused: held in memory until then (a flush that takes
   * long keeps every record appended meanwhile). The spool's writers count them in spool.receivingMemoryBytes.
   */
  unsettledBytes = 0;
  #flushing = false;
  #flushes = 0;
  /** The waiters of the flush under way, and when it began (performance.now()). */
  #flushBatch: Waiter[] = [];
  #flushStartedAt = 0;
  /**
   * The flush under way was found past its deadline by a look after the reads (#checkStall): since when it has
   * waited; null while none was. Never the clock alone: a process that got the CPU back late runs its timers, and
   * the commands it reads, before the fdatasync's completion waiting to be read, and a flush the disk confirmed in
   * time refused its records and made new mail refused as if the disk hung.
   */
  #hungAt: number | null = null;
  /** Looks at the flush under way for its deadline (see #checkStall); made at the first flush. */
  #stallCheck: NodeJS.Timeout | null = null;
  /** The look to come in the check phase, once the poll phase has read what completed. */
  #stallLook: NodeJS.Immediate | null = null;
  readonly #syncDeadline: SyncDeadline;
  /**
   * Ids whose done line markDoneDurably() wrote and has not (or could not) sync: their line read back (refresh(),
   * refreshDoneOf()) leaves them in the index, as their removal is not on disk yet.
   */
  readonly #doneNotDurable = new Set<string>();
  /** A reader's: the highest segment number on disk at its last catchUp() (null before the first). */
  #seenSeq: number | null = null;

  private constructor(dir: string, writable: boolean, segmentBytes: number, syncDeadline: SyncDeadline = { ms: DEFAULT_SYNC_DEADLINE_MS }) {
    this.dir = dir;
    this.#writable = writable;
    this.#segmentBytes = segmentBytes;
    this.#syncDeadline = syncDeadline;
    this.#dirSync = new DirectorySyncer(dir);
  }

  /**
   * Read every segment and its done list. A writable journal (the server's) keeps damaged bytes aside,
   * deletes segments with nothing left in them and appends to a fresh segment, never after a possibly
   * torn tail; a read-only one (the queue command's) only reads, and may mark messages done.
   */
  static open(dir: string, opts: { writable: boolean; segmentBytes?: number; syncDeadline?: SyncDeadline }): Journal {
    const journal = new Journal(dir, opts.writable, opts.segmentBytes ?? SEGMENT_BYTES, opts.syncDeadline);
    journal.#key = readJournalKey(dir);
    const seqs = readdirSync(dir)
      .map((n) => /^(\d{10})\.seg$/.exec(n)?.[1])
      .filter((s): s is string => s !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
    try {
      for (const seq of seqs) journal.#load(seq, seq === seqs.at(-1));
    } catch (err) {
      journal.close(); // nothing was changed: a journal that cannot be read whole is not written either
      throw err;
    }
    journal.#nextSeq = (seqs.at(-1) ?? 0) + 1;
    if (opts.writable) {
      journal.#key ??= createJournalKey(dir);
      for (const segment of [...journal.#segments.values()]) journal.#collect(segment);
      // Done lists whose segment is gone (a crash between the two unlinks); every acked file (see the top of this file).
      for (const n of readdirSync(dir)) {
        const m = /^(\d{10})\.(done|acked)$/.exec(n);
        if (m && (m[2] === 'acked' || !journal.#segments.has(Number(m[1])))) unlinkSync(join(dir, n));
      }
    }
    return journal;
  }

  /**
   * A reader that catches up with the writer's journal as it grows (the queue process's view of a worker's
   * journal): nothing is read until catchUp().
   */
  static openReader(dir: string): Journal {
    const journal = new Journal(dir, false, SEGMENT_BYTES);
    journal.#key = readJournalKey(dir);
    return journal;
  }

  /**
   * A reader's view brought up to date without reading the journal again: segments the writer deleted are
   * forgotten, the known ones are read on from their last intact record, done lists are applied, and new
   * segments are read. Segments not read yet (a reader's first look at a long queue) are read newest first,
   * at least one per call and then while fewer than `budgetBytes` were read: a long queue is read in steps
   * (the caller yields between them) instead of blocking the event loop for all of it, and a message just
   * announced, in the newest segment, is found at once. True once every segment on disk has been read.
   */
  catchUp(budgetBytes = Infinity): boolean {
    if (this.#writable) { this.refresh(); return true; }
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      names = [];
    }
    const onDisk = names.map((n) => /^(\d{10})\.seg$/.exec(n)?.[1]).filter((x): x is string => x !== undefined).map(Number).sort((a, b) => a - b);
    const present = new Set(onDisk);
    for (const segment of [...this.#segments.values()]) {
      if (!present.has(segment.seq)) this.#drop(segment);
      else this.#readOn(segment);
    }
    // Each also drops its segment if the file went (or another took its name) meanwhile: see #readDone.
    for (const segment of [...this.#segments.values()]) this.#readDone(segment);
    const seen = this.#seenSeq;
    const unread = onDisk.filter((seq) => !this.#segments.has(seq));
    let read = 0;
    let loaded = 0;
    for (let i = unread.length - 1; i >= 0; i--) {
      const seq = unread[i]!;
      // New since the last look: read now. Older ones (a first look): within the budget.
      if ((seen === null || seq <= seen) && loaded > 0 && read >= budgetBytes) continue;
      try {
        this.#load(seq, seq === onDisk.at(-1));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // deleted by the writer meanwhile
        throw err;
      }
      read += this.#segments.get(seq)?.readTo ?? 0;
      loaded++;
      unread.splice(i, 1);
    }
    this.#seenSeq = Math.max(seen ?? 0, onDisk.at(-1) ?? 0);
    return unread.length === 0;
  }

  /** A reader's: a segment the writer deleted (everything in it was done) leaves the view. */
  #drop(segment: Segment): void {
    for (const [id, at] of this.#index) if (at.segment === segment) this.#index.delete(id);
    this.#segments.delete(segment.seq);
    if (segment.marking) segment.dropped = true; // closed when its durable marks' syncs end (markDoneDurably)
    else this.#closeFiles(segment);
  }

  /**
   * A reader's: the records the writer appended to a known segment since the last look. Read a window at a
   * time from the end of the last intact record; a record cut by the window (or still being written) is
   * read again next time, and the zeros written ahead end the reading.
   */
  #readOn(segment: Segment): void {
    let window = 64 * 1024;
    for (;;) {
      const size = fstatSync(segment.fd).size;
      if (size <= segment.readTo) return;
      // Nothing appended yet: the zeros written ahead (a record starts with its header, never a zero).
      if (readSync(segment.fd, ONE_BYTE, 0, 1, segment.readTo) === 1 && ONE_BYTE[0] === 0) return;
      const want = Math.min(window, size - segment.readTo);
      const data = Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const n = readSync(segment.fd, data, got, want - got, segment.readTo + got);
        if (n === 0) break;
        got += n;
      }
      const scanned = this.#scanWithKey(data.subarray(0, got), segment.path, segment.readTo === 0).records;
      const base = segment.readTo;
      const records = this.#acknowledged(segment, scanned.map((r) => ({ ...r, offset: base + r.offset })));
      for (const r of records) this.#indexRecord(segment, r);
      const last = records.at(-1);
      if (last) segment.readTo = last.offset + last.length + 1;
      if (records.length < scanned.length) return; // the rest once the writer has acknowledged them
      if (last) continue;
      // No whole record in the window: zeros (the end for now), the end of the file, or a longer record.
      if (got < window || isZero(data.subarray(0, got))) return;
      window *= 2;
    }
  }

  /** scanSegment, reading the key again if a reader meets a V4 record before the writer's first key was there. */
  #scanWithKey(data: Buffer, path: string, fromStart: boolean): ReturnType<typeof scanSegment> {
    try {
      return scanSegment(data, this.#key, fromStart);
    } catch (err) {
      if (err instanceof NewerRecordError) throw newerJournal(path, err);
      if (!(err instanceof MissingJournalKeyError)) throw err;
      this.#key ??= this.#writable ? null : readJournalKey(this.dir);
      if (this.#key !== null) return scanSegment(data, this.#key, fromStart);
      throw new Error(`${path}: ${err.message}: ${join(this.dir, KEY_FILE)} is missing (restore it from a backup of this data directory; a new key cannot check these records)`);
    }
  }

  /**
   * A reader's: the records (in file order) the writer has acknowledged, per its acked file (read again only when
   * records lie past the end it said last), while the writer runs: records a writer killed before it acknowledged
   * them are taken, as its next start takes them (the spool's lock, in the journal's parent folder, says whether it
   * runs). The writer's own journal takes every record it reads (its start's).
   */
  #acknowledged<R extends { offset: number; length: number }>(segment: Segment, records: R[]): R[] {
    if (this.#writable || records.length === 0) return records;
    const end = (r: R): number => r.offset + r.length + 1;
    const last = end(records.at(-1)!);
    if (last > segment.ackedEnd) {
      segment.ackedEnd = readAcked(segment.path.replace(/\.seg$/, '.acked'), segment.ackedEnd);
      if (last > segment.ackedEnd && lockHolder(dirname(this.dir)) === null) segment.ackedEnd = Infinity;
    }
    let n = records.length;
    while (n > 0 && end(records[n - 1]!) > segment.ackedEnd) n--;
    return n === records.length ? records : records.slice(0, n);
  }

  /** Index a record read from a segment. The same message in two places (a copy written again after a failed sync): the later segment's wins. */
  #indexRecord(segment: Segment, r: { id: string; offset: number; length: number; crc: number | null; seed: number }): void {
    if (segment.doneEarly?.delete(r.id)) return;
    const earlier = this.#index.get(r.id);
    if (earlier && earlier.segment.seq > segment.seq) return; // a reader reading newest first
    if (earlier) earlier.segment.live--;
    this.#index.set(r.id, { segment, offset: r.offset, length: r.length, crc: r.crc, seed: r.seed });
    segment.live++;
  }

  has(id: string): boolean { return this.#index.has(id); }

  ids(): string[] { return [...this.#index.keys()]; }

  get size(): number { return this.#index.size; }

  /** Flushes (fdatasync rounds) so far: appends per flush is the group-commit factor. */
  get flushes(): number { return this.#flushes; }

  /** Segment files on disk that this journal knows of. */
  get segments(): number { return this.#segments.size; }

  /** What open() found that was not an intact record (to be logged by the caller). */
  get damage(): readonly JournalDamage[] { return this.#damage; }

  /** Append a message; resolves once it is durable (with every record appended before the same flush). */
  append(id: string, chunks: readonly Buffer[]): Promise<void> {
    if (!this.#writable) return Promise.reject(new Error('the journal is open read-only'));
    if (this.#index.has(id)) return Promise.reject(new Error(`message ${id} is already in the journal`));
    let length = 0;
    for (const c of chunks) length += c.length;
    const key = this.#key!;
    const keyCrc = this.#keyCrc?.key === key ? this.#keyCrc.crc : (this.#keyCrc = { key, crc: crc32(key) }).crc;
    const seed = keyedRecordSeedFrom(keyCrc, id, length);
    let crc = seed;
    for (const c of chunks) crc = crc32(c, crc);
    const header = Buffer.from(`${HEADER} ${id} ${length} ${crc.toString(16).padStart(8, '0')}\n`);
    // The flush under way is past its deadline (a disk that stopped answering): refused now, not after waiting too.
    const stalled = this.#stalled(performance.now());
    if (stalled) return Promise.reject(stalled);
    return new Promise<void>((resolve, reject) => {
      const bytes = header.length + length + 1;
      let settled = false;
      const unheld = (): void => {
        if (settled) return;
        settled = true;
        this.unsettledBytes -= bytes;
      };
      const waiter: Waiter = {
        id, header, chunks, bytes, headerBytes: header.length, length, crc, seed,
        segment: null as unknown as Segment,
        resolve: () => { unheld(); resolve(); },
        reject: (err) => { unheld(); reject(err); },
      };
      try {
        this.#place(waiter);
      } catch (err) {
        reject(err as Error);
        return;
      }
      this.unsettledBytes += bytes;
      this.#waiting.push(waiter);
      this.#flush();
    });
  }

  /**
   * The record's bytes (as a `.msg` file holds them), or null when the message is not in the journal.
   * Throws when they no longer match the record's checksum (the record's only integrity check: its
   * envelope carries no SHA-256, unlike a message file's).
   */
  read(id: string): Buffer | null {
    const at = this.#index.get(id);
    if (!at) return null;
    if (at.segment.unwritten.length > 0 && at.offset >= at.segment.unwrittenAt) this.#write(at.segment); // not yet flushed
    const data = Buffer.allocUnsafe(at.length);
    for (let off = 0; off < at.length;) {
      const n = readSync(at.segment.fd, data, off, at.length - off, at.offset + off);
      if (n === 0) throw new Error(`${at.segment.path}: record of ${id} is truncated`);
      off += n;
    }
    if (at.crc !== null && crc32(data, at.seed) !== at.crc) throw new Error(`${at.segment.path}: record of ${id} is damaged (CRC-32 mismatch)`);
    return data;
  }

  /** The message has left the queue (delivered, bounced or deleted). */
  markDone(id: string): boolean {
    const at = this.#index.get(id);
    if (!at) return false;
    this.#appendDone(at.segment, id);
    this.#forget(id);
    return true;
  }

  /**
   * markDone, with the done line on disk (and the done list's folder entry, when this process opened it) before
   * it returns: for a removal that takes away other evidence next (a state file naming the recipients delivered
   * in earlier attempts), or that an operator was told is done (`postern queue delete`). Until it has returned the
   * message stays in the index, so its segment cannot be collected under the sync.
   */
  async markDoneDurably(id: string): Promise<boolean> {
    const at = this.#index.get(id);
    if (!at) return false;
    const segment = at.segment;
    // Its line, read back before it is synced (or after its sync failed), does not take it out of the index.
    this.#doneNotDurable.add(id);
    this.#appendDone(segment, id);
    const fd = segment.doneFd!;
    // A reader may drop the segment meanwhile (the writer, seeing the line, deleted it): its files stay open until this
    // sync ends, or the sync failed on a closed handle (EBADF), or synced whatever file took its number.
    segment.marking = (segment.marking ?? 0) + 1;
    try {
      await new Promise<void>((resolve, reject) => fsync(fd, (err) => (err ? reject(err) : resolve())));
    } finally {
      if (--segment.marking === 0 && segment.dropped) this.#closeFiles(segment);
    }
    // The done list may be new (made now, or by a markDone that did not sync, or by another process): its entry
    // in the folder once per segment, shared by the calls that come meanwhile; a failure is tried again next time.
    segment.doneEntry ??= this.#dirSync.sync().catch((err: unknown) => { segment.doneEntry = null; throw err; });
    await segment.doneEntry;
    this.#doneNotDurable.delete(id);
    this.#forget(id);
    return true;
  }

  /**
   * Apply the done lines appended since the last look to the segment that holds `id`: one look at one done list, for
   * a caller about to read, move or keep the message, which another process (`postern queue delete`) may have
   * marked done since this journal last looked.
   */
  refreshDoneOf(id: string): void {
    const at = this.#index.get(id);
    if (at) this.#readDone(at.segment);
  }

  /** Apply done lines other processes (`postern queue delete`) appended since the last look. */
  refresh(): void {
    for (const segment of [...this.#segments.values()]) {
      this.#readDone(segment);
      if (this.#writable) this.#collect(segment);
    }
  }

  /** Close every file; appends still waiting for their flush are refused. */
  close(): void {
    if (this.#stallCheck) clearInterval(this.#stallCheck);
    this.#stallCheck = null;
    if (this.#stallLook) clearImmediate(this.#stallLook);
    this.#stallLook = null;
    for (const w of this.#waiting.splice(0)) this.#refuse(w, new Error('the journal was closed'));
    for (const segment of this.#segments.values()) this.#closeFiles(segment);
    this.#segments.clear();
    this.#index.clear();
    this.#active = null;
  }

  #activeSegment(): Segment {
    if (this.#active) return this.#active;
    const seq = this.#nextSeq++;
    const path = join(this.dir, `${String(seq).padStart(10, '0')}.seg`);
    const segment: Segment = {
      seq, path, donePath: path.replace(/\.seg$/, '.done'), ...this.#createSegmentFiles(path), zeroFd: null, doneFd: null, ackedEnd: Infinity,
      doneRead: 0, size: 0, live: 0, active: true, failed: false, pinned: false, entrySynced: false, syncing: 0, zeroedTo: 0,
      unwritten: [], unwrittenAt: 0, readTo: 0, ino: 0,
    };
    this.#segments.set(seq, segment);
    this.#active = segment;
    return segment;
  }

  /**
   * A new segment file, its acked file first (none acknowledged: a reader that sees the segment finds it). The
   * journal's folder deleted while the server runs (`rm -rf` of the spool) is made again, with the key the records
   * are checksummed with: mail is taken again, and a restart can read it.
   */
  #createSegmentFiles(path: string): { fd: number; ackedFd: number } {
    const ackedPath = path.replace(/\.seg$/, '.acked');
    let ackedFd: number;
    try {
      ackedFd = openSync(ackedPath, 'w', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      ackedFd = openSync(ackedPath, 'w', 0o600);
    }
    let fd: number | null = null;
    try {
      writeAcked(ackedFd, 0);
      fd = openSync(path, 'wx+', 0o600);
      if (!existsSync(join(this.dir, KEY_FILE))) createJournalKey(this.dir, this.#key!);
    } catch (err) {
      if (fd !== null) closeSync(fd);
      closeSync(ackedFd);
      try { unlinkSync(ackedPath); } catch { /* removed at the next start */ }
      throw err;
    }
    return { fd, ackedFd };
  }

  /** Put a record at the end of the active segment, to be written by the next flush. */
  #place(w: Waiter): void {
    let segment = this.#activeSegment();
    try {
      this.#zeroAhead(segment, w.bytes);
    } catch (err) {
      this.#retire(segment);
      // The process's file size limit (RLIMIT_FSIZE: ulimit -f, systemd LimitFSIZE=) reached: this segment is full
      // for it, not failing; the record goes to a new one (refused only if it does not fit in an empty segment).
      if ((err as NodeJS.ErrnoException).code !== 'EFBIG' || segment.size === 0) throw err;
      segment = this.#activeSegment();
      try {
        this.#zeroAhead(segment, w.bytes);
      } catch (again) {
        this.#retire(segment);
        throw again;
      }
    }
    if (segment.unwritten.length === 0) segment.unwrittenAt = segment.size;
    segment.unwritten.push(w.header);
    for (const b of w.chunks) segment.unwritten.push(b);
    segment.unwritten.push(NEWLINE);
    this.#index.set(w.id, { segment, offset: segment.size + w.headerBytes, length: w.length, crc: w.crc, seed: w.seed });
    segment.size += w.bytes;
    segment.live++;
    w.segment = segment;
    if (segment.size >= this.#segmentBytes) this.#retire(segment);
  }

  /**
   * Before `bytes` more are appended: zeros ahead of the records (see the top of this file), synced in
   * the background. Not past the segment's size limit: a record beyond it simply extends the file.
   */
  #zeroAhead(segment: Segment, bytes: number): void {
    let extended = false;
    while (segment.size + bytes + ZERO_AHEAD > segment.zeroedTo && segment.zeroedTo < this.#segmentBytes) {
      segment.zeroFd ??= openSync(segment.path, 'r+');
      for (let done = 0; done < ZEROS.length;) {
        const n = writeSync(segment.zeroFd, ZEROS, done, ZEROS.length - done, segment.zeroedTo + done);
        if (n <= 0) throw new Error('short write'); // as for records: the segment is given up
        done += n;
      }
      segment.zeroedTo += ZEROS.length;
      extended = true;
    }
    if (!extended) return;
    segment.syncing++;
    fdatasync(segment.zeroFd!, (err) => {
      segment.syncing--;
      // The file's state is unknown after a failed sync.
      if (err) this.#fail(segment); else this.#collect(segment);
    });
  }

  /**
   * One flush at a time; appends that arrive meanwhile share the next one. Each segment's records are
   * acknowledged by its own sync: a failure refuses the records that sync was for, and no others.
   */
  #flush(): void {
    if (this.#flushing || this.#waiting.length === 0) return;
    this.#flushing = true;
    this.#flushes++;
    const batch = this.#waiting;
    this.#waiting = [];
    this.#flushBatch = batch;
    this.#flushStartedAt = performance.now();
    this.#stallCheck ??= setInterval(() => {
      // Judged in the check phase, after the poll phase has read a completion that waited there (see #hungAt).
      this.#stallLook ??= setImmediate(() => {
        this.#stallLook = null;
        this.#checkStall();
      });
    }, STALL_CHECK_MS).unref();
    const segments = segmentsOf(batch);
    let errors: Map<Segment, Error> | null = null; // made on the first failure
    /** Where each segment's records written by this flush end. */
    const written = new Map<Segment, number>();
    const settle = (): void => {
      // Told to readers before anyone is told the records are durable (see the top of this file).
      for (const [segment, end] of written) {
        if (errors?.has(segment) || segment.failed) continue;
        try {
          writeAcked(segment.ackedFd!, end);
        } catch (err) {
          (errors ??= new Map()).set(segment, err as Error);
          this.#fail(segment);
        }
      }
      for (const w of batch) {
        if (w.givenUp) continue; // refused at the deadline, listed as done: acknowledged by nothing
        const err = errors?.get(w.segment);
        if (err) this.#refuse(w, err);
        // Synced, yet the file failed meanwhile, possibly with an error this sync did not see: write it again.
        else if (w.segment.failed) { if (this.#move(w)) this.#waiting.push(w); }
        else w.resolve();
      }
      this.#flushing = false;
      this.#hungAt = null;
      this.#flushBatch = [];
      this.#flush();
    };
    let syncing = 0;
    for (const segment of segments) {
      try {
        this.#write(segment);
      } catch (err) {
        (errors ??= new Map()).set(segment, err as Error);
        continue;
      }
      written.set(segment, segment.unwrittenAt);
      syncing++;
      this.#sync(segment, (err) => {
        if (err) (errors ??= new Map()).set(segment, err);
        if (--syncing === 0) settle();
      });
    }
    if (syncing === 0) settle();
  }

  /** Since when (performance.now()) the flush under way has waited, once a look after the reads found it past its deadline; else null. */
  hungSince(): number | null {
    return this.#flushing ? this.#hungAt : null;
  }

  /** The error for appends while the flush under way is past its deadline (spool.syncDeadlineMs, sync-deadline.ts), or null. */
  #stalled(now: number): Error | null {
    if (this.hungSince() === null) return null;
    return notConfirmed(`the spool journal's last write (${this.dir})`, now - this.#flushStartedAt);
  }

  /**
   * The flush under way is past its deadline: its records, and those waiting for the next flush (which cannot start
   * before it ends), are refused (listed as done first, as any refused record: #refuse), so their clients get a reply
   * and send them again, here once the disk answers or to another server. The flush goes on; when the disk answers
   * it, the next one takes what came since.
   */
  #checkStall(): void {
    const now = performance.now();
    if (this.#flushing && now - this.#flushStartedAt >= this.#syncDeadline.ms) this.#hungAt ??= this.#flushStartedAt;
    const err = this.#stalled(now);
    if (!err) return;
    for (const w of [...this.#flushBatch, ...this.#waiting]) {
      if (w.givenUp) continue;
      w.givenUp = true;
      this.#refuse(w, err);
    }
    // The waiting records' bytes are all that is left unwritten (the flush under way wrote its own): dropped, or the
    // next flush wrote and synced them, acknowledged, and only their done line (never synced) kept a refused message
    // from being delivered besides the copy its client sends again.
    for (const w of this.#waiting) {
      if (w.segment.unwritten.length === 0) continue;
      w.segment.unwritten = [];
      w.segment.size = w.segment.unwrittenAt;
    }
    this.#waiting = [];
  }

  /**
   * Write a segment's unwritten records: one system call for all the records of a flush instead of one
   * each. On failure (a full disk) the segment is given up (see #fail).
   */
  #write(segment: Segment): void {
    if (segment.unwritten.length === 0) return;
    let position = segment.unwrittenAt;
    try {
      for (let i = 0; i < segment.unwritten.length; i += MAX_IOV) {
        const some = segment.unwritten.slice(i, i + MAX_IOV);
        let want = 0;
        for (const b of some) want += b.length;
        const written = writevSync(segment.fd, some, position);
        if (written < want) {
          const rest = Buffer.concat(some).subarray(written);
          for (let off = 0; off < rest.length;) {
            const n = writeSync(segment.fd, rest, off, rest.length - off, position + written + off);
            if (n <= 0) throw new Error('short write');
            off += n;
          }
        }
        position += want;
      }
    } catch (err) {
      this.#fail(segment);
      throw err;
    }
    segment.unwritten = [];
    segment.unwrittenAt = position;
  }

  /** fdatasync the segment, and the directory once for a new segment; `done` gets the error, if any. */
  #sync(segment: Segment, done: (err: Error | null) => void): void {
    segment.syncing++;
    const finish = (err: Error | null): void => {
      segment.syncing--;
      if (err) this.#fail(segment); else this.#collect(segment);
      done(err);
    };
    fdatasync(segment.fd, (err) => {
      // Deleted meanwhile (the spool's folder removed under the server), or moved (a folder above the data
      // directory renamed): durable only in a file nobody will read, the queue looks for it at its path. The
      // segment fails; its records are written again to a new one (see the settle of #flush).
      if (!err && !namedAt(segment.path, segment.fd)) this.#fail(segment);
      if (err || segment.entrySynced) { finish(err); return; }
      this.#dirSync.sync().then(() => { segment.entrySynced = true; finish(null); }, finish);
    });
  }

  /**
   * A write or sync of the segment failed. Linux may have dropped its unwritten pages, and the error is
   * reported once: the segment takes nothing more, and the records waiting for their flush go to a
   * fresh segment (the failing flush refuses its own).
   */
  #fail(segment: Segment): void {
    if (segment.failed) return;
    segment.failed = true;
    segment.unwritten = [];
    this.#retire(segment);
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const w of waiting) {
      if (w.segment !== segment || this.#move(w)) this.#waiting.push(w);
    }
    this.#flush(); // normally one is under way and takes them next
  }

  /**
   * Write a record not yet acknowledged again, to the active segment; false (and refused) if that fails
   * too. The copy left behind is listed as done in the old segment, so it never comes back on its own.
   */
  #move(w: Waiter): boolean {
    const from = w.segment;
    this.#forget(w.id);
    try {
      this.#place(w);
    } catch (err) {
      this.#refuse(w, err as Error);
      return false;
    }
    if (this.#segments.has(from.seq)) {
      try { this.#appendDone(from, w.id); } catch { /* at start the later copy wins anyway */ }
    }
    return true;
  }

  /**
   * Refuse an append that is not durable: it leaves the index (it was never acknowledged). Its bytes may be
   * in the segment all the same (after a failed sync they stay readable in the page cache), where a reader
   * (the queue process) or the next start would find the record: it is listed as done, before the client
   * is told to send again, so that the message is not delivered besides the copy it sends.
   */
  #refuse(w: Waiter, err: Error): void {
    const segment = this.#index.get(w.id)?.segment ?? w.segment;
    if (segment && this.#segments.has(segment.seq)) {
      try { this.#appendDone(segment, w.id); } catch { /* the disk is failing: a copy may then be delivered too */ }
    }
    this.#forget(w.id);
    w.reject(err);
  }

  #appendDone(segment: Segment, id: string): void {
    segment.doneFd ??= openSync(segment.donePath, 'a', 0o600);
    // One write per line on an O_APPEND file: lines from the server and the queue command never interleave.
    // A newline first as well: a line some process's write left cut short (a full disk takes part of a write,
    // and libuv reports the part, not the error) is ended by it instead of glued to this id, which would leave
    // neither readable as done. Readers skip the empty lines.
    const line = `\n${id}\n`;
    const written = writeSync(segment.doneFd, line); // refresh() reads it back too: harmless, and keeps the offset simple
    if (written < Buffer.byteLength(line)) {
      throw Object.assign(new Error(`ENOSPC: no space left on device, write (${segment.donePath}: the done line of ${id} was cut short)`), { code: 'ENOSPC', syscall: 'write' });
    }
  }

  #retire(segment: Segment): void {
    segment.active = false;
    if (this.#active === segment) this.#active = null;
    this.#collect(segment);
  }

  #forget(id: string): void {
    const at = this.#index.get(id);
    if (!at) return;
    this.#index.delete(id);
    at.segment.live--;
    if (this.#writable) this.#collect(at.segment);
  }

  /** Delete a segment that takes no more records and has none left (done list second: see open()). */
  #collect(segment: Segment): void {
    if (!this.#writable || segment.active || segment.live > 0 || segment.syncing > 0 || segment.pinned) return;
    if (!this.#segments.has(segment.seq)) return;
    try {
      unlinkSync(segment.path);
    } catch {
      return; // left for the next start; its done list must stay with it
    }
    this.#segments.delete(segment.seq);
    this.#closeFiles(segment);
    try { unlinkSync(segment.donePath); } catch { /* missing, or removed at the next start */ }
    if (segment.ackedFd !== null) {
      try { unlinkSync(segment.path.replace(/\.seg$/, '.acked')); } catch { /* removed at the next start */ }
    }
  }

  #closeFiles(segment: Segment): void {
    closeSync(segment.fd);
    if (segment.zeroFd !== null) closeSync(segment.zeroFd);
    if (segment.doneFd !== null) closeSync(segment.doneFd);
    if (segment.ackedFd !== null) closeSync(segment.ackedFd);
    segment.zeroFd = null;
    segment.doneFd = null;
    segment.ackedFd = null;
  }

  /** Index the intact records of an existing segment, keep its damaged bytes aside, then apply its done list. */
  #load(seq: number, last: boolean, opened?: number): void {
    const path = join(this.dir, `${String(seq).padStart(10, '0')}.seg`);
    const fd = opened ?? openSync(path, this.#writable ? 'r+' : 'r');
    const size = fstatSync(fd).size;
    const segment: Segment = {
      seq, path, donePath: path.replace(/\.seg$/, '.done'), fd, zeroFd: null, doneFd: null, ackedFd: null, ackedEnd: this.#writable ? Infinity : -1,
      doneRead: 0, size, live: 0, active: false, failed: false, pinned: false, entrySynced: true, syncing: 0, zeroedTo: size,
      unwritten: [], unwrittenAt: size, readTo: 0, ino: fstatSync(fd).ino,
    };
    this.#segments.set(seq, segment);
    const data = Buffer.allocUnsafe(size);
    let read = 0;
    while (read < size) {
      const n = readSync(fd, data, read, size - read, read);
      if (n === 0) break;
      read += n;
    }
    let scanned: ReturnType<typeof scanSegment>;
    try {
      scanned = scanSegment(data.subarray(0, read), this.#key);
    } catch (err) {
      if (!(err instanceof MissingJournalKeyError)) {
        this.#segments.delete(seq);
        closeSync(fd);
        throw err instanceof NewerRecordError ? newerJournal(path, err) : err;
      }
      // A reader that looked for the key just before the server's first start made it: look again.
      this.#key ??= this.#writable ? null : readJournalKey(this.dir);
      if (this.#key !== null) return this.#load(seq, last, fd);
      this.#segments.delete(seq);
      closeSync(fd);
      throw new Error(`${path}: ${err.message}: ${join(this.dir, KEY_FILE)} is missing (restore it from a backup of this data directory; a new key cannot check these records)`);
    }
    const { damaged } = scanned;
    const records = this.#acknowledged(segment, scanned.records);
    for (const r of records) this.#indexRecord(segment, r);
    const final = records.at(-1);
    segment.readTo = final ? final.offset + final.length + 1 : 0;
    for (const d of damaged) {
      const quarantine = this.#writable ? this.#quarantine(segment, data.subarray(d.offset, d.offset + d.length), d.offset) : null;
      this.#damage.push({ segment: path, offset: d.offset, length: d.length, tail: d.tail, lastSegment: last, quarantine });
    }
    this.#readDone(segment);
  }

  /**
   * Copy damaged bytes to `quarantine/<segment>.<offset>`, durably, before their segment can be deleted.
   * If that fails the segment itself is kept.
   */
  #quarantine(segment: Segment, bytes: Buffer, offset: number): string | null {
    const dir = join(this.dir, 'quarantine');
    const file = join(dir, `${basename(segment.path)}.${offset}`);
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const fd = openSync(file, 'w', 0o600);
      try {
        for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      const dirFd = openSync(dir, 'r');
      try { fsyncSync(dirFd); } finally { closeSync(dirFd); }
      return file;
    } catch {
      segment.pinned = true;
      return null;
    }
  }

  /**
   * Apply the done lines appended since the last look. A reader then checks that the segment's file is still the one it
   * read: the writer deletes a segment once every record in it is done (at its start, say), its file first and its done
   * list second, so a reader that read the records before and looks at the done list after finds none, and took every
   * record for undelivered: delivered again (a queue process that started with a worker after a restart), or a message
   * `postern queue delete` had removed. A file still there after the done list was read vouches for what was read.
   */
  #readDone(segment: Segment): void {
    const data = this.#unreadDone(segment);
    if (!this.#writable && inodeOf(segment.path) !== segment.ino) {
      this.#drop(segment);
      return;
    }
    if (data === null) return;
    const text = data.toString('latin1');
    const complete = text.lastIndexOf('\n') + 1; // a line being written right now is read next time
    segment.doneRead += complete;
    let ahead: boolean | null = null;
    for (const id of text.slice(0, complete).split('\n')) {
      if (!id) continue;
      const at = this.#index.get(id);
      if (at?.segment === segment) {
        if (!this.#doneNotDurable.has(id)) this.#forget(id);
      } else if (!at && !this.#writable && (ahead ??= this.#recordAhead(segment))) {
        // Its record may be one this reader has not taken yet: one its writer refused after a failed sync (listed as
        // done before the client was told to send again), never acknowledged, which the reader takes once the writer
        // is gone; or one appended and marked done by another process between this reader's looks. Without this the
        // record, read later, was taken for undelivered: delivered besides the copy its client sent again.
        (segment.doneEarly ??= new Set()).add(id);
      }
    }
  }

  /** A reader's: whether the segment's file holds a record past those taken (not zeros written ahead, not its end). */
  #recordAhead(segment: Segment): boolean {
    return fstatSync(segment.fd).size > segment.readTo && readSync(segment.fd, ONE_BYTE, 0, 1, segment.readTo) === 1 && ONE_BYTE[0] !== 0;
  }

  /** The segment's done list past what was applied already; null: nothing new (or no done list yet). */
  #unreadDone(segment: Segment): Buffer | null {
    try {
      const fd = openSync(segment.donePath, 'r');
      try {
        const size = fstatSync(fd).size;
        if (size <= segment.doneRead) return null;
        const data = Buffer.alloc(size - segment.doneRead);
        readSync(fd, data, 0, data.length, segment.doneRead);
        return data;
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }
}

function isZero(data: Buffer): boolean {
  for (let at = 0; at < data.length; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, data.length - at);
    if (!data.subarray(at, at + n).equals(ZEROS.subarray(0, n))) return false;
  }
  return true;
}

/** Whether the open file `fd` is still the file at `path` (not deleted, not moved away with a folder above it); false too when it cannot be asked (closed meanwhile). */
function namedAt(path: string, fd: number): boolean {
  try {
    const open = fstatSync(fd);
    if (open.nlink === 0) return false;
    const named = statSync(path);
    return named.ino === open.ino && named.dev === open.dev;
  } catch {
    return false;
  }
}

/** Say in an acked file that the records up to `end` are acknowledged (see the top of this file). */
function writeAcked(fd: number, end: number): void {
  const bytes = Buffer.alloc(ACKED_BYTES);
  bytes.writeBigUInt64LE(BigInt(end), 0);
  bytes.writeBigUInt64LE(BigInt(end), 8);
  if (writeSync(fd, bytes, 0, ACKED_BYTES, 0) !== ACKED_BYTES) throw Object.assign(new Error('ENOSPC: no space left on device, write (acked file cut short)'), { code: 'ENOSPC', syscall: 'write' });
}

/**
 * The end of the acknowledged records an acked file names: Infinity when there is none (every record counts), the
 * end read before (`last`) when the read met a rewrite half done.
 */
function readAcked(path: string, last: number): number {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return Infinity;
    throw err;
  }
  if (data.length !== ACKED_BYTES) return Math.max(last, 0);
  const end = data.readBigUInt64LE(0);
  return end === data.readBigUInt64LE(8) ? Number(end) : Math.max(last, 0);
}

/** The inode a path names now (0 when it is gone). */
function inodeOf(path: string): number {
  try {
    return statSync(path).ino;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
}

/** The segments a batch of appends went to, in order; nearly always one. */
function segmentsOf(batch: readonly Waiter[]): Segment[] {
  const first = batch[0]!.segment;
  let one = true;
  for (const w of batch) if (w.segment !== first) { one = false; break; }
  return one ? [first] : [...new Set(batch.map((w) => w.segment))];
}

/** The error for a segment a newer release wrote: which file, and what the administrator can do. */
function newerJournal(path: string, err: NewerRecordError): Error {
  return new Error(`${path}: ${err.message}; nothing in this spool was read or changed: run the newer release again to deliver it (or release or delete its messages there) before starting this one on the data directory`);
}

/** The journal's key, or null when it has none yet. */
function readJournalKey(dir: string): string | null {
  const path = join(dir, KEY_FILE);
  let text: string;
  try {
    text = readFileSync(path, 'latin1');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`${path}: cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (!KEY_PATTERN.test(text)) throw new Error(`${path}: not a journal key (64 hexadecimal digits)`);
  return text.slice(0, 64);
}

/** A new key (or `key` written again), durable (file and directory entry) before any record is checksummed with it. */
function createJournalKey(dir: string, key = randomBytes(32).toString('hex')): string {
  const temp = join(dir, `${KEY_FILE}.new`);
  const fd = openSync(temp, 'w', 0o600);
  try {
    // A write the disk cut short is reported by its length, not an error: a key file missing its end would
    // make every record checksummed with the whole key unreadable at the next start.
    if (writeSync(fd, `${key}\n`) !== key.length + 1) throw Object.assign(new Error(`ENOSPC: no space left on device, write (${temp} cut short)`), { code: 'ENOSPC', syscall: 'write' });
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temp, join(dir, KEY_FILE));
  const dirFd = openSync(dir, 'r');
  try { fsyncSync(dirFd); } finally { closeSync(dirFd); }
  return key;
}
