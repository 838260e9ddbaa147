/**
 * Reading a journal segment at start: its intact records, and the byte ranges that are not records.
 * Every record is framed by its header (id, length, CRC-32 over both and the bytes) and a closing newline, so a damaged record
 * is skipped and reading goes on at the next intact one: one bad record never hides those after it.
 * Bytes after the last intact record are a tail: a write cut short by a crash (never acknowledged), or
 * zeros written ahead of the records (not reported).
 *
 * A record's bytes are a client's message, which can hold anything, a well-formed record too (with an
 * envelope of the client's choosing). Reading from the start, record after record, never looks inside
 * one; but after a damaged record the next one is searched for, and that search could land in a message.
 * So it only takes a V4 record, whose checksum starts from the journal's secret key (journal/key, never
 * leaves the data directory): a client cannot compute it. Older records are read only in sequence (right
 * after an intact record, or after a damaged one whose header still reads); a search does not take them:
 * they are kept aside with the damage (quarantine/), not taken on trust.
 */
import { crc32 } from 'node:zlib';

const MAGIC_V4 = Buffer.from('POSTERN-RECORD-V4 ');
const HEADER_PATTERN = /^POSTERN-RECORD-V(?:1 ([0-9a-z]{8,32}) (\d{1,12})|([234]) ([0-9a-z]{8,32}) (\d{1,12}) ([0-9a-f]{8}))\n/;
const MAX_HEADER = 80;
/** The newest record version this release reads (journal.ts writes it). */
export const RECORD_VERSION = 4;
/** Any release's record header, to tell a record of a newer release from damage. */
const ANY_VERSION = /^POSTERN-RECORD-V(\d{1,6}) /;
const ZERO_CHUNK = Buffer.alloc(64 * 1024);

/**
 * What a V3 record's checksum starts from: its id and length, so a flipped bit in the header cannot put an
 * intact message under another id (V2 checksums covered the bytes alone: seed 0).
 */
export function recordSeed(id: string, length: number): number {
  return crc32(`${id} ${length}`);
}

/**
 * A V4 record's seed: recordSeed's, started from the journal's secret key. CRC-32 is no MAC, but its
 * result is unknown (one chance in 2^32) to whoever does not know the key's 32-bit state.
 */
export function keyedRecordSeed(key: string, id: string, length: number): number {
  return keyedRecordSeedFrom(crc32(key), id, length);
}

/** keyedRecordSeed() given crc32(key), which a writer keeps (the key is fixed; its CRC cost a string conversion per record). */
export function keyedRecordSeedFrom(keyCrc: number, id: string, length: number): number {
  return crc32(`${id} ${length}`, keyCrc);
}

/** Thrown when a V4 record is read in sequence and there is no key to check it with. */
export class MissingJournalKeyError extends Error {}

/**
 * Thrown when a record of a version this release does not know is read in sequence: a newer release wrote
 * this journal (a downgrade). Its records are mail that was acknowledged; taken for damage, they would be
 * moved to quarantine/ as a torn tail and their segment deleted, and the queue would look empty.
 */
export class NewerRecordError extends Error {
  readonly offset: number;
  readonly version: number;
  constructor(offset: number, version: number) {
    super(`a record of version ${version} at offset ${offset}, written by a newer release of Postern (this one reads records up to version ${RECORD_VERSION})`);
    this.offset = offset;
    this.version = version;
  }
}

export interface ScannedRecord {
  id: string;
  /** Where the record's bytes (after its header) start, and how many there are. */
  offset: number;
  length: number;
  /** null for a V1 record, which has no checksum. */
  crc: number | null;
  /** Where the checksum of the bytes starts (recordSeed for V3, 0 before). */
  seed: number;
}

export interface DamagedRange {
  offset: number;
  length: number;
  /** No intact record follows it in the segment. */
  tail: boolean;
}

/**
 * `key`: the journal's secret (journal/key); null when it has none yet (then it has no V4 records). `fromStart`:
 * `data` starts at the segment's first byte (a reader reading on from its last record passes false).
 */
export function scanSegment(data: Buffer, key: string | null, fromStart = true): { records: ScannedRecord[]; damaged: DamagedRange[] } {
  const records: ScannedRecord[] = [];
  const damaged: DamagedRange[] = [];
  let offset = 0;
  while (offset < data.length) {
    const h = headerAt(data, offset, key);
    if (h?.keyed && key === null) throw new MissingJournalKeyError(`a V4 record at offset ${offset}, and no journal key to check it with`);
    if (!h && offset === 0 && fromStart) newerRecord(data, key);
    const record = recordAt(data, offset, key);
    if (record) {
      records.push(record);
      offset = record.offset + record.length + 1;
      continue;
    }
    if (allZero(data, offset)) break; // the zeros written ahead of the records
    const next = nextKeyedRecord(data, offset, key);
    if (next < 0) {
      damaged.push({ offset, length: lastNonZero(data, offset) + 1 - offset, tail: true });
      break;
    }
    damaged.push({ offset, length: next - offset, tail: false });
    offset = next;
  }
  return { records, damaged };
}

/**
 * Throws NewerRecordError when the segment starts with a record of a newer version. A writer starts a segment of
 * its own at each start, so a newer release's records begin a segment: only there is an unknown version taken
 * for one (elsewhere it is damage, as before). A header whose version digit a bit flip changed still checks as
 * the V4 record it was (the checksum does not cover that digit) and is followed by a V4 record, or by nothing:
 * damage too, not a newer release.
 */
function newerRecord(data: Buffer, key: string | null): void {
  const head = data.toString('latin1', 0, Math.min(data.length, MAX_HEADER));
  const version = Number(ANY_VERSION.exec(head)?.[1] ?? 0);
  if (version <= RECORD_VERSION) return;
  const v4 = /^POSTERN-RECORD-V\d+ ([0-9a-z]{8,32}) (\d{1,12}) ([0-9a-f]{8})\n/.exec(head);
  if (v4 && key !== null) {
    const start = v4[0].length;
    const end = start + Number(v4[2]);
    const checks = end < data.length && data[end] === 0x0a && crc32(data.subarray(start, end), keyedRecordSeed(key, v4[1]!, Number(v4[2]))) === parseInt(v4[3]!, 16);
    const next = Number(ANY_VERSION.exec(data.toString('latin1', end + 1, Math.min(data.length, end + 1 + MAX_HEADER)))?.[1] ?? 0);
    if (checks && next !== version) return;
  }
  throw new NewerRecordError(0, version);
}

/** The header at `offset`, if it parses (its record may still be damaged). */
function headerAt(data: Buffer, offset: number, key: string | null): { id: string; start: number; length: number; crc: number | null; seed: number; keyed: boolean } | null {
  const m = HEADER_PATTERN.exec(data.toString('latin1', offset, Math.min(data.length, offset + MAX_HEADER)));
  if (!m) return null;
  const id = m[1] ?? m[4]!;
  const length = Number(m[2] ?? m[5]);
  const keyed = m[3] === '4';
  const seed = keyed ? (key === null ? 0 : keyedRecordSeed(key, id, length)) : m[3] === '3' ? recordSeed(id, length) : 0;
  return { id, start: offset + m[0].length, length, crc: m[6] === undefined ? null : parseInt(m[6], 16), seed, keyed };
}

/** The intact record at `offset`: header, all its bytes, the closing newline and (V2 on) a matching checksum. */
function recordAt(data: Buffer, offset: number, key: string | null): ScannedRecord | null {
  const h = headerAt(data, offset, key);
  if (!h || (h.keyed && key === null)) return null;
  const end = h.start + h.length;
  if (end + 1 > data.length || data[end] !== 0x0a) return null;
  if (h.crc !== null && crc32(data.subarray(h.start, end), h.seed) !== h.crc) return null;
  return { id: h.id, offset: h.start, length: h.length, crc: h.crc, seed: h.seed };
}

/**
 * Where the next intact record after a bad one at `offset` starts, or -1: the one right after it, or else
 * the first V4 record searched for everywhere after `offset`, inside the bad record too (its length may be
 * what is damaged). Only a record checked with the journal's key is taken by that search (see the top).
 */
function nextKeyedRecord(data: Buffer, offset: number, key: string | null): number {
  // A bad record whose header still reads, followed right at its end by an intact one: its length was
  // right (its bytes are what is damaged), so that next record is in sequence, whatever its version. A
  // client cannot know where a damaged length would point, so it cannot put a record there.
  const h = headerAt(data, offset, key);
  if (h) {
    const end = h.start + h.length + 1;
    if (end < data.length && recordAt(data, end, key)) return end;
  }
  if (key === null) return -1;
  for (let at = data.indexOf(MAGIC_V4, offset + 1); at >= 0; at = data.indexOf(MAGIC_V4, at + 1)) {
    if (recordAt(data, at, key)) return at;
  }
  return -1;
}

function allZero(data: Buffer, from: number): boolean {
  for (let at = from; at < data.length; at += ZERO_CHUNK.length) {
    const n = Math.min(ZERO_CHUNK.length, data.length - at);
    if (!data.subarray(at, at + n).equals(ZERO_CHUNK.subarray(0, n))) return false;
  }
  return true;
}

function lastNonZero(data: Buffer, from: number): number {
  let at = data.length - 1;
  while (at > from && data[at] === 0) at--;
  return at;
}
