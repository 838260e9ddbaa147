/**
 * The supervisor's record of scripts that crash or hang their worker: crash records the watchdog
 * threads write (<dataDir>/fences/crash-*.json), and those the supervisor makes itself from a dead
 * worker's running-call mirror (a death at once, by signal or abnormal exit), are counted per script (hook, file, SHA-256 of its
 * source; a crash in a batch of n scripts counts 1/n for each, when the record could not tell which one ran: see running-call.ts); at CRASHES_TO_FENCE the script is fenced — workers answer its hook with 451 4.3.0 without
 * running it — until its file changes (checked every few seconds while a fence stands).
 * `<dataDir>/fences/fenced.json` keeps the list across restarts; `postern status` shows it.
 */
import { readdirSync, readFileSync, unlinkSync, mkdirSync, writeFileSync, renameSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { RunningScript } from '../sandbox/running-call.ts';
import { prepareScript } from '../sandbox/script-source.ts';
import { runningCall } from '../sandbox/running-call.ts';
import { CRASHES_TO_FENCE } from './process-model.ts';

export interface Fence extends RunningScript { since: string; crashes: number }
export interface CrashRecord { worker: number; scripts: RunningScript[] }

const keyOf = (s: RunningScript): string => `${s.hook}\0${s.file}\0${s.sha256}`;

const FENCE_LIST = 'fenced.json';

/** A crash record (crash-record.ts), or an error naming the file. */
function readCrashRecord(path: string): CrashRecord {
  const text = readFileSync(path, 'utf8');
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: not JSON (${(err as Error).message})`);
  }
  const r = record as Partial<CrashRecord> | null;
  if (typeof r !== 'object' || r === null || typeof r.worker !== 'number' || !Array.isArray(r.scripts) || !r.scripts.every(isScript)) {
    throw new Error(`${path}: not a crash record (worker, scripts), as this release writes it`);
  }
  return r as CrashRecord;
}

function isScript(f: unknown): boolean {
  return typeof f === 'object' && f !== null && ['hook', 'file', 'sha256'].every((k) => typeof (f as Record<string, unknown>)[k] === 'string');
}

/** Rename an unreadable file to `<file>.unreadable` (kept for the administrator, never read again); its new name, or null. */
function setAside(path: string): string | null {
  try {
    renameSync(path, `${path}.unreadable`);
    return `${path}.unreadable`;
  } catch {
    return null;
  }
}

/**
 * The fences saved in `dir` ([] when there is no list yet); throws, naming the file, when the file is not a list of
 * fences: taken for none, a list cut short was dropped without a word, and a list of another shape (a newer
 * release's) made each worker throw at start ("list is not iterable").
 */
export function readFenceList(dir: string): Fence[] {
  const path = join(dir, FENCE_LIST);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new Error(`${path}: cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: not JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(list) || !list.every(isScript)) throw new Error(`${path}: not a list of fences (hook, file, sha256), as this release writes it`);
  return list as Fence[];
}

export class FenceBook {
  readonly #dir: string;
  readonly #onSaveError: (err: unknown) => void;
  readonly #onUnreadable: (message: string, keptAs: string | null) => void;
  /** Crash records counted but still on disk (they could not be removed). */
  readonly #counted = new Set<string>();
  readonly #crashes = new Map<string, number>();
  #fences: Fence[] = [];

  /**
   * `onSaveError`: the fence list could not be written (it stays in force in memory). `onUnreadable`: the list
   * on disk could not be read (cut short, hand-edited, or another release's format): it is moved aside to
   * `fenced.json.unreadable` (not overwritten by the next save) and the server starts without those fences; a
   * crash record likewise (`<record>.unreadable`), uncounted. `onUnreadable` gets the line to log.
   */
  constructor(dir: string, onSaveError: (err: unknown) => void = () => undefined, onUnreadable: (message: string, keptAs: string | null) => void = () => undefined) {
    this.#dir = dir;
    this.#onSaveError = onSaveError;
    this.#onUnreadable = onUnreadable;
    mkdirSync(dir, { recursive: true });
    try {
      this.#fences = readFenceList(dir);
    } catch (err) {
      const keptAs = setAside(join(dir, FENCE_LIST));
      onUnreadable(`the fence list is unreadable: ${(err as Error).message}; starting without its fences (${keptAs ? `the file is kept as ${keptAs}` : 'it could not be moved aside'})`, keptAs);
    }
  }

  get fences(): readonly Fence[] { return this.#fences; }

  /** Read new crash records (and count `more`, made by the caller); returns the scripts fenced by them. */
  collect(more: readonly CrashRecord[] = []): { fenced: Fence[]; crashes: CrashRecord[] } {
    const fenced: Fence[] = [];
    const crashes: CrashRecord[] = [...more];
    let names: string[] = [];
    try { names = readdirSync(this.#dir); } catch { /* the folder is gone: only `more` to count */ }
    for (const name of names) {
      if (!/^crash-.*\.json$/.test(name)) continue;
      const path = join(this.#dir, name);
      if (!this.#counted.has(name)) {
        let record: CrashRecord;
        try {
          record = readCrashRecord(path);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // taken meanwhile
          // Written whole (crash-record.ts), so never read mid-write: cut short by a crash of the disk or an older
          // release's writer, or of another shape. Taken for "being written", it was skipped at every look for ever.
          const keptAs = setAside(path);
          this.#onUnreadable(`a crash record is unreadable: ${(err as Error).message}; not counted (${keptAs ? `kept as ${keptAs}` : 'it could not be moved aside'})`, keptAs);
          continue;
        }
        crashes.push(record);
        this.#counted.add(name);
      }
      // Counted once, even when it cannot be taken away (a broken disk): forgotten once it is gone.
      try { unlinkSync(path); this.#counted.delete(name); } catch { /* tried again at the next collect */ }
    }
    for (const record of crashes) {
      // Calls batched into one entry share the blame: each of n distinct scripts gets 1/n of the crash, so
      // a script that happened to run beside the culprit a few times is not fenced with it.
      const scripts = [...new Map(record.scripts.map((s) => [keyOf(s), s])).values()];
      for (const s of scripts) {
        const key = keyOf(s);
        const n = (this.#crashes.get(key) ?? 0) + 1 / scripts.length;
        this.#crashes.set(key, n);
        if (n >= CRASHES_TO_FENCE - 1e-9 && !this.#fences.some((f) => keyOf(f) === key)) {
          const fence = { hook: s.hook, file: s.file, sha256: s.sha256, since: new Date().toISOString(), crashes: Math.round(n * 100) / 100 };
          this.#fences.push(fence);
          fenced.push(fence);
        }
      }
    }
    if (fenced.length) this.#save();
    return { fenced, crashes };
  }

  /** Fences whose file changed since (or is gone) are lifted; returns them. */
  async lift(): Promise<Fence[]> {
    const lifted: Fence[] = [];
    for (const f of this.#fences) {
      let sha: string | null = null;
      try {
        const script = await prepareScript(f.file, await readFile(f.file, 'utf8'));
        sha = runningCall.hash(script.source);
      } catch { /* unreadable or broken now: changed all the same */ }
      if (sha !== f.sha256) lifted.push(f);
    }
    if (lifted.length) {
      this.#fences = this.#fences.filter((f) => !lifted.includes(f));
      for (const f of lifted) this.#crashes.delete(keyOf(f));
      this.#save();
    }
    return lifted;
  }

  /** The fence list on disk, for the next start; one that cannot be written (a full disk) still holds in memory. */
  #save(): void {
    const path = join(this.#dir, FENCE_LIST);
    try {
      writeFileSync(`${path}.tmp`, JSON.stringify(this.#fences, null, 2));
      renameSync(`${path}.tmp`, path);
    } catch (err) {
      this.#onSaveError(err);
    }
  }
}
