/**
 * Which script the event-loop thread is running right now, readable from another thread while this one
 * is stuck: a SharedArrayBuffer the watchdog thread (engine/cluster/watchdog.ts) reads when the
 * heartbeat stops. Set around each script call made on the main thread (the fast path); a call on an
 * isolate thread cannot block the event loop. Scripts get ids when a sandbox is built; the table of ids
 * (hook, file, SHA-256 of the source) is told to listeners then, since the blocked thread cannot answer.
 *
 * Cells (Int32): [0] heartbeat, [1] how many calls the current entry runs (0: none), [2..] their ids.
 * Minimal version for the multi-process model; the sandbox branch has the full one (same shape).
 */
import { createHash } from 'node:crypto';

export interface RunningScript { hook: string; file: string; sha256: string }

const MAX_IDS = 8;
const cells = new Int32Array(new SharedArrayBuffer(4 * (2 + MAX_IDS)));
const table = new Map<number, RunningScript>();
const idByFile = new Map<string, number>();
const registered = new Set<(id: number, script: RunningScript) => void>();
/** Scripts fenced off by the supervisor ("hook\0file\0sha256"): they answer 451 without running. */
const fenced = new Set<string>();
let nextId = 0;

export const runningCall = {
  get buffer(): SharedArrayBuffer { return cells.buffer as SharedArrayBuffer; },
  table: table as ReadonlyMap<number, RunningScript>,

  hash(source: string): string { return createHash('sha256').update(source).digest('hex'); },

  /** A sandbox was built with this script; returns its id. */
  register(hook: string, file: string, source: string): number {
    const sha256 = runningCall.hash(source);
    const known = idByFile.get(file);
    if (known !== undefined && table.get(known)!.sha256 === sha256) return known;
    const id = ++nextId;
    const script = { hook, file, sha256 };
    table.set(id, script);
    idByFile.set(file, id);
    for (const fn of registered) fn(id, script);
    return id;
  },

  /** Called for every script registered from now on, and now for those already registered. */
  onRegister(fn: (id: number, script: RunningScript) => void): void {
    registered.add(fn);
    for (const [id, script] of table) fn(id, script);
  },

  /** Before a main-thread entry into an isolate that runs these files' scripts. */
  enter(files: readonly string[]): void {
    const n = Math.min(files.length, MAX_IDS);
    for (let i = 0; i < n; i++) cells[2 + i] = idByFile.get(files[i]!) ?? 0;
    Atomics.store(cells, 1, n);
  },

  exit(): void { Atomics.store(cells, 1, 0); },

  /** The event loop is alive (called from a timer). */
  beat(): void { Atomics.add(cells, 0, 1); },

  /** What `buffer` says now (the watchdog thread does the same on its own view of it). */
  read(buffer: SharedArrayBuffer): { heartbeat: number; ids: number[] } {
    const view = new Int32Array(buffer);
    const n = Atomics.load(view, 1);
    return { heartbeat: Atomics.load(view, 0), ids: Array.from(view.subarray(2, 2 + n)) };
  },

  /** Replace the fenced set (sent by the supervisor). */
  setFenced(list: readonly RunningScript[]): void {
    fenced.clear();
    for (const s of list) fenced.add(`${s.hook}\0${s.file}\0${s.sha256}`);
  },

  /** Whether this script, as it is now, is fenced. */
  isFenced(hook: string, file: string): boolean {
    if (fenced.size === 0) return false;
    const id = idByFile.get(file);
    const s = id === undefined ? undefined : table.get(id);
    return s !== undefined && fenced.has(`${hook}\0${file}\0${s.sha256}`);
  },
};
