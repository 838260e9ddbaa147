/**
 * Reading a journal segment at start: its intact records, and the byte ranges that are not records.
 * Every record is framed by its header (id, length, CRC-32 over both and the bytes) and a closing newline, so a damaged record
 * is skipped and reading goes on at the next intact one: one bad record never hides those after it.
 * Bytes after the last intact record are a tail: a write cut short by a crash (never acknowledged), or
 * zeros written ahead of the records (not reported).
 */
import { crc32 } from 'node:zlib';

const MAGIC = Buffer.from('POSTERN-RECORD-V');
const HEADER_PATTERN = /^POSTERN-RECORD-V(?:1 ([0-9a-z]{8,32}) (\d{1,12})|([23]) ([0-9a-z]{8,32}) (\d{1,12}) ([0-9a-f]{8}))\n/;
const MAX_HEADER = 80;
const ZERO_CHUNK = Buffer.alloc(64 * 1024);

/**
 * What a V3 record's checksum starts from: its id and length, so a flipped bit in the header cannot put an
 * intact message under another id (V2 checksums covered the bytes alone: seed 0).
 */
export function recordSeed(id: string, length: number): number {
  return crc32(`${id} ${length}`);
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

export function scanSegment(data: Buffer): { records: ScannedRecord[]; damaged: DamagedRange[] } {
  const records: ScannedRecord[] = [];
  const damaged: DamagedRange[] = [];
  let offset = 0;
  while (offset < data.length) {
    const record = recordAt(data, offset);
    if (record) {
      records.push(record);
      offset = record.offset + record.length + 1;
      continue;
    }
    if (allZero(data, offset)) break; // the zeros written ahead of the records
    const next = nextRecord(data, offset);
    if (next < 0) {
      damaged.push({ offset, length: lastNonZero(data, offset) + 1 - offset, tail: true });
      break;
    }
    damaged.push({ offset, length: next - offset, tail: false });
    offset = next;
  }
  return { records, damaged };
}

/** The header at `offset`, if it parses (its record may still be damaged). */
function headerAt(data: Buffer, offset: number): { id: string; start: number; length: number; crc: number | null; seed: number } | null {
  const m = HEADER_PATTERN.exec(data.toString('latin1', offset, Math.min(data.length, offset + MAX_HEADER)));
  if (!m) return null;
  const id = m[1] ?? m[4]!;
  const length = Number(m[2] ?? m[5]);
  return { id, start: offset + m[0].length, length, crc: m[6] === undefined ? null : parseInt(m[6], 16), seed: m[3] === '3' ? recordSeed(id, length) : 0 };
}

/** The intact record at `offset`: header, all its bytes, the closing newline and (V2) a matching checksum. */
function recordAt(data: Buffer, offset: number): ScannedRecord | null {
  const h = headerAt(data, offset);
  if (!h) return null;
  const end = h.start + h.length;
  if (end + 1 > data.length || data[end] !== 0x0a) return null;
  if (h.crc !== null && crc32(data.subarray(h.start, end), h.seed) !== h.crc) return null;
  return { id: h.id, offset: h.start, length: h.length, crc: h.crc, seed: h.seed };
}

/**
 * Where the next intact record after a bad one at `offset` starts, or -1. A bad record whose header still
 * reads gives its own end, so its bytes are not searched for something that looks like a record.
 */
function nextRecord(data: Buffer, offset: number): number {
  const h = headerAt(data, offset);
  if (h) {
    const end = h.start + h.length + 1;
    if (end < data.length && (recordAt(data, end) || allZero(data, end))) return recordAt(data, end) ? end : -1;
  }
  for (let at = data.indexOf(MAGIC, offset + 1); at >= 0; at = data.indexOf(MAGIC, at + 1)) {
    if (recordAt(data, at)) return at;
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
