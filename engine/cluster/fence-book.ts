/**
 * The supervisor's record of scripts that crash or hang their worker: crash records the watchdog
 * threads write (<dataDir>/fences/crash-*.json), and those the supervisor makes itself from a dead
 * worker's running-call mirror (a death at once, by signal or abnormal exit), are counted per script (hook, file, SHA-256 of its
 * source; a crash in a batch of n scripts counts 1/n for each, when the record could not tell which one ran: see running-call.ts); at CRASHES_TO_FENCE (a shadow script at SHADOW_CRASHES_TO_FENCE: its first) the script is fenced — workers answer its hook with 451 4.3.0 without
 * running it — until its file changes (checked every few seconds while a fence stands).
 * `<dataDir>/fences/fenced.json` keeps the list across restarts; `postern status` shows it.
 *
 * Both files are written whole (a temporary file renamed into place), so a reader never sees half of one. One
 * damaged all the same (a disk, a hand edit) is no reason to stop: it is set aside as `damaged-<name>` and
 * reported (`onDamaged`), never read as the empty list in silence, and never let through to the workers in a
 * shape that throws there (a fence list that is not a list took every worker down at start, and the server).
 */
import { readdirSync, unlinkSync, mkdirSync, renameSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { RunningScript } from '../sandbox/running-call.ts';
import { prepareScript } from '../sandbox/script-source.ts';
import { fenceKey, runningCall } from '../sandbox/running-call.ts';
import { HOOK_NAMES } from '../sandbox/hooks.ts';
import { writeFileAtomicSync } from '../spool/fsync.ts';
import { readInputFileSync } from '../config/input-file.ts';
import { CRASHES_TO_FENCE, SHADOW_CRASHES_TO_FENCE } from './process-model.ts';

export interface Fence extends RunningScript { since: string; crashes: number }
export interface CrashRecord { worker: number; scripts: RunningScript[] }

const keyOf = fenceKey;

const FENCE_LIST = 'fenced.json';

/** Far more than any fence list or crash record holds. */
const MAX_STATE_BYTES = 16 * 1024 * 1024;

/**
 * A state file's text: a regular file only (a FIFO in its place would block the supervisor's event loop, and every
 * worker's start, for ever), and not past MAX_STATE_BYTES.
 */
function readState(file: string): string {
  return readInputFileSync(file, MAX_STATE_BYTES).toString('utf8');
}

function isRunningScript(x: unknown): x is RunningScript {
  const s = x as Partial<RunningScript> | null;
  return typeof s === 'object' && s !== null && HOOK_NAMES.includes(s.hook!) && typeof s.file === 'string' && s.file !== ''
    && typeof s.sha256 === 'string' && /^[0-9a-f]{64}$/.test(s.sha256);
}

/** What a crash record or fence list holds, or why it is damaged (its text is not JSON, or not of the shape written). */
function parseRecord<T>(text: string, shape: (v: unknown) => T | null): T | string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return `not JSON: ${(err as Error).message}`;
  }
  return shape(value) ?? 'not of the shape written';
}

const fenceListShape = (v: unknown): Fence[] | null => (Array.isArray(v) && v.every(isRunningScript)
  ? v.map((f: Partial<Fence>) => ({ hook: f.hook!, file: f.file!, sha256: f.sha256!, since: typeof f.since === 'string' ? f.since : '', crashes: typeof f.crashes === 'number' ? f.crashes : CRASHES_TO_FENCE,
    // Kept: a shadow script's fence is its own, apart from the same file run live (running-call.ts: fenceKey).
    ...(f.shadow === true ? { shadow: true as const } : {}) }))
  : null);

const crashRecordShape = (v: unknown): CrashRecord | null => {
  const r = v as Partial<CrashRecord> | null;
  return typeof r === 'object' && r !== null && typeof r.worker === 'number' && Array.isArray(r.scripts) && r.scripts.every(isRunningScript)
    ? { worker: r.worker, scripts: r.scripts } : null;
};

/**
 * `<dir>/fenced.json` as written, for a worker before it loads its first generation: none when there is none,
 * and none when it is damaged (the supervisor, which read it first, has reported it and set it aside).
 */
export function readFenceList(dir: string): RunningScript[] {
  let text: string;
  try {
    text = readState(join(dir, FENCE_LIST));
  } catch {
    return [];
  }
  const list = parseRecord(text, fenceListShape);
  return typeof list === 'string' ? [] : list;
}

export class FenceBook {
  readonly #dir: string;
  readonly #onSaveError: (err: unknown) => void;
  readonly #onDamaged: (message: string) => void;
  /** Crash records counted but still on disk (they could not be removed). */
  readonly #counted = new Set<string>();
  readonly #crashes = new Map<string, number>();
  /** Fences whose file changed while some process still ran an older generation (reported once). */
  readonly #kept = new WeakSet<Fence>();
  #fences: Fence[] = [];

  /**
   * `onSaveError`: the fence list could not be written (it stays in force in memory). `onDamaged`: the fence
   * list or a crash record could not be read; the message names the file, what is wrong and what follows.
   */
  constructor(dir: string, onSaveError: (err: unknown) => void = () => undefined, onDamaged: (message: string) => void = () => undefined) {
    this.#dir = dir;
    this.#onSaveError = onSaveError;
    this.#onDamaged = onDamaged;
    mkdirSync(dir, { recursive: true, mode: 0o700 }); // another user's crash record here would fence a script
    let text: string | null = null;
    try {
      text = readState(join(dir, FENCE_LIST));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        onDamaged(`the fence list ${join(dir, FENCE_LIST)} cannot be read (${(err as Error).message}): the scripts it fenced run again until they crash their worker ${CRASHES_TO_FENCE} times more`);
      }
    }
    if (text === null) return;
    const list = parseRecord(text, fenceListShape);
    if (typeof list !== 'string') {
      this.#fences = list;
      return;
    }
    const aside = this.#setAside(FENCE_LIST);
    onDamaged(`the fence list ${join(dir, FENCE_LIST)} is damaged (${list})${aside}: the scripts it fenced run again until they crash their worker ${CRASHES_TO_FENCE} times more`);
  }

  /** Moves a damaged file out of the way (`damaged-<name>`, kept to look at): it is read no more. */
  #setAside(name: string): string {
    const aside = join(this.#dir, `damaged-${name}`);
    try {
      renameSync(join(this.#dir, name), aside);
      return `; kept as ${aside}`;
    } catch {
      return '';
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
        // Written whole (crash-record.ts): a record that does not read is damaged, not one being written.
        let record: CrashRecord | string;
        try {
          record = parseRecord(readState(path), crashRecordShape);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
          record = (err as Error).message;
        }
        this.#counted.add(name);
        if (typeof record === 'string') {
          const aside = this.#setAside(name);
          this.#onDamaged(`crash record ${path} is damaged (${record})${aside}: that crash is not counted towards a fence`);
          if (aside) { this.#counted.delete(name); continue; }
        } else {
          crashes.push(record);
        }
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
        if (n >= (s.shadow ? SHADOW_CRASHES_TO_FENCE : CRASHES_TO_FENCE) - 1e-9 && !this.#fences.some((f) => keyOf(f) === key)) {
          const fence: Fence = { hook: s.hook, file: s.file, sha256: s.sha256, since: new Date().toISOString(), crashes: Math.round(n * 100) / 100, ...(s.shadow ? { shadow: true as const } : {}) };
          this.#fences.push(fence);
          fenced.push(fence);
        }
      }
    }
    if (fenced.length) this.#save();
    return { fenced, crashes };
  }

  /**
   * Fences whose file changed since (or is gone) are lifted, once `inForce` says every process runs a generation
   * built from what is on disk now; returns them. Until then a process may still hold the fenced source: a reload
   * of the edit refused (a syntax error, the scripts folder gone for a moment in a deploy, the file unreadable)
   * keeps the running generation, and lifting the fence then had that generation run the crashing script again.
   * `kept` hears of each fence whose file changed but that stays for that reason (once per fence).
   */
  async lift(inForce: () => Promise<boolean> = async () => true, kept: (f: Fence) => void = () => undefined): Promise<Fence[]> {
    let lifted: Fence[] = [];
    for (const f of this.#fences) {
      let sha: string | null = null;
      try {
        const script = await prepareScript(f.file, await readFile(f.file, 'utf8'));
        sha = runningCall.hash(script.source);
      } catch { /* unreadable or broken now: changed all the same */ }
      if (sha !== f.sha256) lifted.push(f);
    }
    // Asked after the files were read: an edit since then is not in force everywhere yet, so nothing is lifted for it.
    if (lifted.length && !(await inForce())) {
      for (const f of lifted) if (!this.#kept.has(f)) { this.#kept.add(f); kept(f); }
      lifted = [];
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
    try {
      writeFileAtomicSync(join(this.#dir, FENCE_LIST), JSON.stringify(this.#fences, null, 2), { mode: 0o600 });
    } catch (err) {
      this.#onSaveError(err);
    }
  }
}
