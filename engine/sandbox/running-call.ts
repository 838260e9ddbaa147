/**
 * Which policy scripts the event-loop thread is running right now, readable from another thread.
 *
 * A fast-path call (applySync) cannot always be stopped: V8 builtins such as Array.prototype.lastIndexOf
 * over 2³²-1 holes do not check for interrupts, and the thread stays in them. A watchdog thread (see
 * engine/cluster) that sees the event loop stall reads this marker to name the script before it ends the
 * process. Entering and leaving cost one Atomics.store each: the marker holds the sandbox's id and the set
 * of hooks of the calls in the entry (a batch may mix hooks), as `id * 128 + hookMask`, 0 when idle.
 * Beside it: the event loop's heartbeat (a counter a timer bumps) that the watchdog watches, and the set of
 * fenced scripts (engine/cluster/fence-book.ts) that answer 451 without running.
 *
 * A process can also die at once, without hanging (SIGSEGV in a builtin, a native abort), on the event-loop
 * thread or on an isolate thread. Its own threads die with it, so in a worker process the markers are
 * mirrored into a file (mirrorTo()) that the supervisor reads after the death: word 0 is the event-loop
 * marker, words 1.. are the calls running on isolate threads (enterAsync()); beside it, the table as JSON.
 * One 4-byte pwrite per enter and exit (~1 µs): Node cannot map memory shared between processes.
 */
import { openSync, writeSync, closeSync, writeFileSync, renameSync, readFileSync, rmSync } from 'node:fs';
import { HOOK_NAMES } from './hooks.ts';
import type { HookName } from './api/index.ts';

export interface RunningScript {
  hook: HookName;
  file: string;
  sha256: string;
  /** Run as a shadow script (a listener's shadowScripts): fenced at its first crash (fence-book.ts). */
  shadow?: true;
}

/**
 * How crash counts and fences name a script: its hook, file and content, and whether it ran as a shadow script. A
 * shadow script is fenced at its first crash; named by file and content alone, that fence also fenced the same folder
 * run live by another listener (its hook answered 451 4.3.0 after one crash of the candidate, not three of its own).
 */
export function fenceKey(s: { hook: string; file: string; sha256: string; shadow?: boolean }): string {
  return `${s.hook}\0${s.file}\0${s.sha256}${s.shadow === true ? '\0shadow' : ''}`;
}

/** What the watchdog needs to decode the marker: per sandbox id, its scripts by hook. */
export type RunningCallTable = Record<number, Partial<Record<HookName, RunningScript>>>;

const HOOK_BITS = 128; // 7 hooks
/**
 * Word 0: the marker. Word 1: the hook bit of the call of that entry whose synchronous part runs now, written by
 * the isolate's runtime itself (isolate-runtime.ts), 0 when not known (between calls, in continuations): a batch
 * mixes hooks, and a call stuck in a builtin must be blamed alone, not with the calls that ran beside it (each of
 * those would take a share of every crash, and one always batched beside it would be fenced with it).
 * Word 2: 1 while the scripts' log budget of this second is spent (log-budget.ts): the runtimes then make no
 * line of a log() call at all, instead of formatting and copying out lines that would be dropped. Word 3: the
 * same for shadow scripts, whose budget is their own.
 */
const marker = new Int32Array(new SharedArrayBuffer(16));
/** The word of `marker` that says the scripts' log budget is spent (read by isolate-runtime.ts, by index). */
export const LOG_CLOSED_WORD = 2;
/** The word that says the shadow scripts' log budget is spent. */
export const SHADOW_LOG_CLOSED_WORD = 3;
const heartbeat = new Int32Array(new SharedArrayBuffer(4));
const table: RunningCallTable = {};
/** Scripts fenced off by the supervisor, as "hook\0file\0sha256". */
const fenced = new Set<string>();
const listeners = new Set<(table: RunningCallTable) => void>();
let nextId = 1;

/** Calls on isolate threads tracked at most at once (one per isolate runs at a time); more go unnamed. */
const ASYNC_SLOTS = 63;
const asyncBusy = new Uint8Array(ASYNC_SLOTS + 1); // index 0 unused: it is the event-loop marker's word
/**
 * After the isolate-thread words, two written by the watchdog thread during a stall (StallMirror): the marker's
 * word 0 then, and its word 1 (the call running now). Word 1 is not mirrored per call (a pwrite per call); without
 * this copy a process the supervisor kills before its watchdog names the call (a loaded machine) was blamed on
 * every hook of the batch.
 */
const STALL_SLOT = ASYNC_SLOTS + 1;
const MIRROR_WORDS = STALL_SLOT + 2;
let mirrorFd = -1;
let mirrorPath: string | null = null;
const word = new Int32Array(1);
const wordBytes = new Uint8Array(word.buffer);

/** Write one marker word to the mirror file; a failing mirror is dropped (attribution is best effort). */
function mirror(slot: number, value: number): void {
  word[0] = value;
  try {
    writeSync(mirrorFd, wordBytes, 0, 4, slot * 4);
  } catch {
    try { closeSync(mirrorFd); } catch { /* already gone */ }
    mirrorFd = -1;
  }
}

function writeTableMirror(): void {
  if (mirrorPath === null) return;
  try {
    writeOwnFile(`${mirrorPath}.json.tmp`, JSON.stringify(table));
    renameSync(`${mirrorPath}.json.tmp`, `${mirrorPath}.json`);
  } catch { /* best effort, as the words */ }
}

/**
 * A file under this process's own name (its pid's), created anew: whatever is at the name is removed first, a
 * symbolic link another user planted there included, which a plain open would follow (and truncate its target).
 */
function openOwnFile(file: string): number {
  rmSync(file, { force: true });
  return openSync(file, 'wx+', 0o600);
}

function writeOwnFile(file: string, data: string): void {
  const fd = openOwnFile(file);
  try { writeFileSync(fd, data); } finally { closeSync(fd); }
}

/** The value of a marker word for a sandbox id and the OR of hookBit()s. */
const markerValue = (id: number, hookMask: number): number => id * HOOK_BITS + hookMask;

/** One bit per hook, by name: computed once (an indexOf per call showed in profiles of every message). */
const HOOK_BITS_BY_NAME: Readonly<Record<HookName, number>> = Object.freeze(
  Object.fromEntries(HOOK_NAMES.map((hook, i) => [hook, 1 << i])) as Record<HookName, number>,
);

/** One bit per hook, for enter(). */
export const hookBit = (hook: HookName): number => HOOK_BITS_BY_NAME[hook];

function changed(): void {
  writeTableMirror();
  const snapshot = runningCallTable();
  for (const listener of listeners) {
    try { listener(snapshot); } catch { /* a listener must not break the sandbox */ }
  }
}

/** A copy of the table (structured-clonable, for postMessage to the watchdog thread). */
export function runningCallTable(): RunningCallTable {
  return structuredClone(table);
}

/**
 * The scripts a marker value names; [] when idle or unknown. `now`: the marker's word 1 (the hook bit of the call
 * running now), which narrows them to that one when it is among them. Pure: usable in the watchdog thread.
 */
export function describeRunning(value: number, scripts: RunningCallTable, now = 0): RunningScript[] {
  if (value <= 0) return [];
  const id = Math.floor(value / HOOK_BITS);
  let mask = value % HOOK_BITS;
  if (now > 0 && (mask & now) === now) mask = now;
  const entry = scripts[id] ?? {};
  return HOOK_NAMES.filter((hook, i) => (mask & (1 << i)) !== 0 && entry[hook]).map((hook) => entry[hook]!);
}

export const runningCall = {
  /** The event loop's heartbeat (one Int32 that beat() bumps): the watchdog reads it with Atomics.load. */
  get heartbeatBuffer(): SharedArrayBuffer {
    return heartbeat.buffer as SharedArrayBuffer;
  },
  /** The event loop is alive (called from a timer). */
  beat(): void {
    Atomics.add(heartbeat, 0, 1);
  },
  /** SHA-256 of a script's source, as the table and the fences name it. */
  hash(source: string): string {
    // node:crypto taken at the call, not imported: every worker and queue process's watchdog thread loads this
    // module (describeRunning, StallMirror), and loading node:crypto there cost each thread ~15 ms of CPU at start.
    return process.getBuiltinModule('node:crypto').createHash('sha256').update(source).digest('hex');
  },
  /** Replace the fenced set (sent by the supervisor). */
  setFenced(list: ReadonlyArray<{ hook: string; file: string; sha256: string; shadow?: boolean }>): void {
    fenced.clear();
    for (const f of list) fenced.add(fenceKey(f));
  },
  /** Whether this hook's script, as a registered sandbox holds it now (a shadow one's, with `shadow`), is fenced. */
  isFenced(hook: HookName, file: string, shadow = false): boolean {
    if (fenced.size === 0) return false;
    for (const entry of Object.values(table)) {
      const s = entry[hook];
      if (s && s.file === file && (s.shadow === true) === shadow && fenced.has(fenceKey(s))) return true;
    }
    return false;
  },
  /** Whether a script with this source is fenced (checked before loading it: a fenced top level does not run). */
  isFencedSource(hook: HookName, file: string, source: string, shadow = false): boolean {
    return fenced.size > 0 && fenced.has(fenceKey({ hook, file, sha256: runningCall.hash(source), shadow }));
  },
  /** Hook bits by hook name, as JSON: the isolate runtime's own copy, to write word 1 of the marker. */
  hookBitsJson: JSON.stringify(HOOK_BITS_BY_NAME),
  /**
   * Scripts' log() calls make no lines (true) until reopened: the process's log budget is spent for this second.
   * `word`: LOG_CLOSED_WORD (live scripts) or SHADOW_LOG_CLOSED_WORD.
   */
  closeScriptLog(closed: boolean, word: number = LOG_CLOSED_WORD): void {
    Atomics.store(marker, word, closed ? 1 : 0);
  },
  /** The marker (Int32 words: see `marker`): pass it to the watchdog thread and read it with Atomics.load. */
  get buffer(): SharedArrayBuffer {
    return marker.buffer as SharedArrayBuffer;
  },
  /** Register a sandbox's scripts; the id it returns goes with every enter(). */
  register(scripts: ReadonlyArray<{ hook: HookName; file: string; source: string }>, shadow = false): number {
    const id = nextId++;
    const entry: Partial<Record<HookName, RunningScript>> = {};
    for (const { hook, file, source } of scripts) entry[hook] = { hook, file, sha256: runningCall.hash(source), ...(shadow ? { shadow: true as const } : {}) };
    table[id] = entry;
    changed();
    return id;
  },
  /** The script a registered sandbox runs for `hook`, as the table names it. */
  scriptOf(id: number, hook: HookName): RunningScript | undefined {
    return table[id]?.[hook];
  },
  unregister(id: number): void {
    if (!(id in table)) return;
    delete table[id];
    changed();
  },
  /** `hookMask`: the OR of hookBit() of the calls about to run. */
  enter(id: number, hookMask: number): void {
    const value = markerValue(id, hookMask);
    marker[1] = 0; // the runtime names the call it runs; the watchdog reads both only after a stall of a second
    Atomics.store(marker, 0, value);
    if (mirrorFd >= 0) mirror(0, value);
  },
  exit(): void {
    Atomics.store(marker, 0, 0);
    if (mirrorFd >= 0) mirror(0, 0);
  },
  /**
   * A call starting on an isolate thread (the event loop goes on meanwhile): recorded in the mirror only,
   * since only a death of the whole process matters there. Returns the token for exitAsync (0: none).
   */
  enterAsync(id: number, hookMask: number): number {
    if (mirrorFd < 0) return 0;
    const slot = asyncBusy.indexOf(0, 1);
    if (slot < 0) return 0;
    asyncBusy[slot] = 1;
    mirror(slot, markerValue(id, hookMask));
    return slot;
  },
  exitAsync(slot: number): void {
    if (slot <= 0 || asyncBusy[slot] === 0) return;
    asyncBusy[slot] = 0;
    if (mirrorFd >= 0) mirror(slot, 0);
  },
  /**
   * Mirror the markers to `<path>.bin` and the table to `<path>.json`, for readMirror() in another process
   * after this one died. Once per process, before scripts run.
   */
  mirrorTo(path: string): void {
    mirrorFd = openOwnFile(`${path}.bin`);
    mirrorPath = path;
    writeSync(mirrorFd, new Uint8Array(4 * MIRROR_WORDS), 0, 4 * MIRROR_WORDS, 0);
    writeTableMirror();
  },
  /** The marker now (0: idle). */
  current(): number {
    return Atomics.load(marker, 0);
  },
  /** Called with a fresh table whenever a sandbox is registered or unregistered; returns an unsubscribe. */
  subscribe(listener: (table: RunningCallTable) => void): () => void {
    listeners.add(listener);
    listener(runningCallTable());
    return () => listeners.delete(listener);
  },
};

/**
 * The scripts a dead process was running, from the mirror it left at `path` (see mirrorTo): those on its
 * event-loop thread and on its isolate threads, each once. [] when it was running none or left no mirror.
 * `eventLoopOnly`: those on its event-loop thread alone (a silence of that thread is no isolate thread's doing).
 */
export function readMirror(path: string, eventLoopOnly = false): RunningScript[] {
  let words: Int32Array;
  let scripts: RunningCallTable;
  try {
    const bytes = new Uint8Array(readFileSync(`${path}.bin`)); // a copy: aligned for the Int32 view
    words = new Int32Array(bytes.buffer, 0, Math.floor(bytes.length / 4));
    scripts = JSON.parse(readFileSync(`${path}.json`, 'utf8')) as RunningCallTable;
  } catch {
    return [];
  }
  const found = new Map<string, RunningScript>();
  // The event-loop call the watchdog saw stalled, when the marker is still the one it saw.
  const now = words.length > STALL_SLOT + 1 && words[STALL_SLOT] === words[0] ? words[STALL_SLOT + 1]! : 0;
  for (let i = 0; i < Math.min(words.length, eventLoopOnly ? 1 : STALL_SLOT); i++) {
    // Each once by its fence key: the same file run live and as a shadow script are two scripts (fenceKey).
    for (const s of describeRunning(words[i]!, scripts, i === 0 ? now : 0)) found.set(fenceKey(s), s);
  }
  return [...found.values()];
}

/**
 * The watchdog thread's copy of the marker into the mirror while the event loop stalls (see STALL_SLOT): the
 * call stuck in a builtin is then blamed alone also when the supervisor, not the watchdog, ends the process.
 * Written only when what it holds changes, and cleared once the event loop beats again. Best effort, as the mirror.
 */
export class StallMirror {
  readonly #path: string;
  readonly #marker: Int32Array;
  #fd = -1;
  readonly #pair = new Int32Array(2);

  constructor(path: string, marker: SharedArrayBuffer) {
    this.#path = path;
    this.#marker = new Int32Array(marker);
  }

  /** The event loop has not beaten for a while: record the call it runs now. */
  stalled(): void {
    this.#write(Atomics.load(this.#marker, 0), Atomics.load(this.#marker, 1));
  }

  /** It beats again: what was recorded no longer holds. */
  resumed(): void {
    this.#write(0, 0);
  }

  #write(value: number, now: number): void {
    if (this.#pair[0] === value && this.#pair[1] === now) return;
    try {
      if (this.#fd < 0) this.#fd = openSync(`${this.#path}.bin`, 'r+');
      this.#pair[0] = value;
      this.#pair[1] = now;
      writeSync(this.#fd, new Uint8Array(this.#pair.buffer), 0, 8, STALL_SLOT * 4);
    } catch { /* no mirror (yet, or any more): nothing to name from */ }
  }
}

/** Remove a mirror's files (after reading it, or when the process ended cleanly). */
export function removeMirror(path: string): void {
  rmSync(`${path}.bin`, { force: true });
  rmSync(`${path}.json`, { force: true });
  rmSync(`${path}.json.tmp`, { force: true });
}
