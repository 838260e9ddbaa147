/**
 * The replay store: `<dataDir>/replay/<YYYY-MM-DD>.<pid>.jsonl`, one JSON record per script call. One
 * file per day and process, so that the worker processes of `postern serve` never write to the same file;
 * rotated by day, old days deleted after `keepDays`, the folder kept under `maxMegabytes`.
 */
import { readdirSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { HookName } from '../sandbox/api/index.ts';

export interface Recording {
  /** When the call was made (ISO 8601). */
  t: string;
  /** Name of the listener, or of the policy service when `source` is `postfix-policy`; null for predelivery. */
  listener: string | null;
  /**
   * Where the call came from, as the context's `connection.source` says: a listener (`smtp`) or a Postfix
   * policy service (`postfix-policy`); null for predelivery. Missing in recordings made before it was
   * recorded: replay then reads the context's own.
   */
  source?: ConnectionSource | null;
  hook: HookName;
  /** Connection id (the message id for predelivery). */
  cid: string | null;
  /** The context the script saw. */
  ctx: Record<string, unknown>;
  /** The live verdict as compared (see verdictLabel): `none`, `failed`, `reject {"text":…}`, … */
  verdict: string;
}

export type ConnectionSource = 'smtp' | 'postfix-policy';

/** A listener's call or a policy service's: the context says (`connection.source`), `smtp` when it does not. */
export function sourceOf(ctx: object): ConnectionSource {
  return (ctx as { connection?: { source?: unknown } }).connection?.source === 'postfix-policy' ? 'postfix-policy' : 'smtp';
}

const FILE = /^(\d{4}-\d{2}-\d{2})\.(\d+)\.jsonl$/;

export const replayDir = (dataDir: string): string => join(dataDir, 'replay');

export const dayOf = (time: number): string => new Date(time).toISOString().slice(0, 10);

export const recordingFile = (dataDir: string, day: string, pid = process.pid): string => join(replayDir(dataDir), `${day}.${pid}.jsonl`);

export interface RecordingFile { path: string; day: string; bytes: number }

/** The recording files of a data directory, oldest day first. */
export function recordingFiles(dataDir: string): RecordingFile[] {
  const dir = replayDir(dataDir);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: RecordingFile[] = [];
  for (const name of names) {
    const m = FILE.exec(name);
    if (!m) continue;
    try {
      out.push({ path: join(dir, name), day: m[1]!, bytes: statSync(join(dir, name)).size });
    } catch { /* deleted meanwhile by another process's pruning */ }
  }
  return out.sort((a, b) => a.day.localeCompare(b.day) || a.path.localeCompare(b.path));
}

/** Delete days older than `keepDays` (today counts as one); returns the bytes left. */
export function pruneRecordings(dataDir: string, keepDays: number, now = Date.now()): number {
  const oldest = dayOf(now - (keepDays - 1) * 86_400_000);
  let bytes = 0;
  for (const f of recordingFiles(dataDir)) {
    if (f.day < oldest) {
      try { unlinkSync(f.path); } catch { /* another process was first */ }
    } else {
      bytes += f.bytes;
    }
  }
  return bytes;
}
