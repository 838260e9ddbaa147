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

export class FenceBook {
  readonly #dir: string;
  readonly #onSaveError: (err: unknown) => void;
  /** Crash records counted but still on disk (they could not be removed). */
  readonly #counted = new Set<string>();
  readonly #crashes = new Map<string, number>();
  #fences: Fence[] = [];

  /** `onSaveError`: the fence list could not be written (it stays in force in memory). */
  constructor(dir: string, onSaveError: (err: unknown) => void = () => undefined) {
    this.#dir = dir;
    this.#onSaveError = onSaveError;
    mkdirSync(dir, { recursive: true });
    try {
      this.#fences = JSON.parse(readFileSync(join(dir, 'fenced.json'), 'utf8')) as Fence[];
    } catch { /* none yet */ }
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
        try {
          crashes.push(JSON.parse(readFileSync(path, 'utf8')) as CrashRecord);
        } catch {
          continue; // being written
        }
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
    const path = join(this.#dir, 'fenced.json');
    try {
      writeFileSync(`${path}.tmp`, JSON.stringify(this.#fences, null, 2));
      renameSync(`${path}.tmp`, path);
    } catch (err) {
      this.#onSaveError(err);
    }
  }
}
