/**
 * Every spool of one data folder seen as one queue. In the multi-process model each worker writes its
 * own spool (`<dataDir>/spool/worker-<n>`: one journal has one writer) and the single queue runner owns
 * `<dataDir>/spool` itself (bounces go there, and whatever a single-process server left). The runner and
 * `postern queue` read all of them through this set; a message is routed to the spool that holds it.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Spool, type ScanEntry, type SpoolWriter } from '../spool/spool.ts';
import type { SpoolEnvelope, SpoolHold, SpoolState } from '../spool/envelope.ts';
import type { Logger } from '../logging/logger.ts';

/** Where worker `index` keeps its spool. */
export function workerSpoolDir(dataDir: string, index: number): string {
  return join(dataDir, 'spool', `worker-${index}`);
}

const WORKER_DIR = /^worker-\d+$/;

export interface QueueCensus {
  messages: number;
  /** Of those, on hold (`postern queue hold`). */
  held: number;
  /** Seconds since the oldest message not on hold was accepted (0: none): a hold does not look like a stuck queue. */
  oldestAgeSeconds: number;
}

export class SpoolSet {
  /** `<dataDir>/spool`: written by this process (bounces), init()ed by the owner of the set. */
  readonly home: Spool;
  readonly root: string;
  readonly #workers = new Map<string, Spool>();
  readonly #owner = new Map<string, Spool>();

  /** For the process that delivers: the workers this server runs, and its logger (see #all). */
  readonly #writers: { workers: number; logger: Logger } | null;

  constructor(home: Spool, writers?: { workers: number; logger: Logger }) {
    this.home = home;
    this.root = home.root;
    this.#writers = writers ?? null;
  }

  /** The data folder's reserve for the queue's bookkeeping (in the home spool's folder). */
  get reserve(): Spool['reserve'] { return this.home.reserve; }
  /** Free space of the spools' filesystem (the home spool's). */
  get freeSpace(): Spool['freeSpace'] { return this.home.freeSpace; }

  /** Worker spools on disk now, also those of workers a smaller `workers` setting no longer starts. */
  #all(): Spool[] {
    let names: string[] = [];
    try {
      names = readdirSync(this.root).filter((n) => WORKER_DIR.test(n));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const n of names) {
      if (this.#workers.has(n)) continue;
      // A spool of a worker this server does not run (it had more) is written by nobody, so nobody would report
      // its damaged records at start: its reader does, as it finds them (a worker's own reports them at its start).
      const orphan = this.#writers !== null && Number(n.slice('worker-'.length)) >= this.#writers.workers;
      // The home spool's sync watch: a state write to any spool past its deadline holds back the others' (the same
      // disk, as a rule), and is reported by the home spool's unconfirmedFor() (/readyz, the gauge).
      this.#workers.set(n, new Spool(join(this.root, n), { syncs: this.home.syncs, ...(orphan ? { readerLogger: this.#writers!.logger } : {}) }));
    }
    return [this.home, ...this.#workers.values()];
  }

  /** Worker spools found unreadable, with what was logged (once per spool and error, not at every scan). */
  readonly #reported = new Map<Spool, string>();

  #unreadable(spool: Spool, err: Error): void {
    if (this.#reported.get(spool) === err.message) return;
    this.#reported.set(spool, err.message);
    this.#writers!.logger.error({ spool: spool.root, err: { message: err.message } },
      `spool ${spool.root} cannot be read: ${err.message}; its messages are not delivered (the other spools' are)`);
  }

  /** A worker announced a message it committed to the spool in `dir`. */
  locate(id: string, dir: string): void {
    const name = dir.slice(this.root.length + 1);
    if (!this.#workers.has(name)) this.#all(); // a worker spool created since the last look
    const spool = this.#workers.get(name);
    if (spool) this.#owner.set(id, spool);
  }

  async #of(id: string): Promise<Spool> {
    const known = this.#owner.get(id);
    if (known) return known;
    for (const spool of this.#all()) {
      if (await spool.has(id)) {
        this.#owner.set(id, spool);
        return spool;
      }
    }
    return this.home; // not anywhere: the home spool's ENOENT / false answers are the right ones
  }

  newId(): string { return this.home.newId(); }
  create(id: string): SpoolWriter { return this.home.create(id); }
  /**
   * Whether a notice this process spooled (create(): always in the home spool) is still there: the home spool alone
   * is looked at, as the queue runner asks at each attempt's record (has() would read every worker's journal for it).
   */
  hasNotice(id: string): Promise<boolean> { return this.home.has(id); }

  async scan(opts: { tidy?: boolean } = {}): Promise<ScanEntry[]> {
    const out: ScanEntry[] = [];
    const seen = new Map<string, Spool>();
    for (const spool of this.#all()) {
      let entries: ScanEntry[];
      try {
        entries = await spool.scan(opts);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // a worker spool not created yet
        // For the process that delivers, a worker spool it cannot read (a newer release's records, its journal key
        // lost) costs that spool's messages, not every spool's: it was the whole scan, at every scan, for ever.
        if (!this.#writers || spool === this.home) throw err;
        this.#unreadable(spool, err as Error);
        continue;
      }
      this.#reported.delete(spool);
      for (const e of entries) { out.push(e); seen.set(e.id, spool); }
    }
    this.#owner.clear();
    for (const [id, spool] of seen) this.#owner.set(id, spool);
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async list(): Promise<string[]> {
    const ids: string[] = [];
    for (const spool of this.#all()) {
      try {
        for (const id of await spool.list()) { ids.push(id); this.#owner.set(id, spool); }
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        if (!this.#writers || spool === this.home) throw err;
        this.#unreadable(spool, err as Error); // as in scan()
      }
    }
    return ids.sort();
  }

  async heldIds(): Promise<string[]> {
    const ids: string[] = [];
    for (const spool of this.#all()) {
      try {
        ids.push(...await spool.heldIds());
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return ids;
  }

  /** The queue at a glance, for `postern status` and the queue gauges. */
  async census(now = Date.now()): Promise<QueueCensus> {
    const ids = await this.list();
    const heldIds = new Set(await this.heldIds());
    let held = 0;
    let oldest = Infinity;
    for (const id of ids) {
      if (heldIds.has(id)) held++; // (a hold its message outlived is not counted)
      else oldest = Math.min(oldest, Spool.idTime(id));
    }
    return { messages: ids.length, held, oldestAgeSeconds: oldest === Infinity ? 0 : Math.max(0, (now - oldest) / 1000) };
  }

  requestRescan(): Promise<void> { return this.home.requestRescan(); }
  rescanStamp(): Promise<string> { return this.home.rescanStamp(); }

  async has(id: string): Promise<boolean> { return (await this.#of(id)).has(id); }
  async readState(id: string): Promise<SpoolState | null> { return (await this.#of(id)).readState(id); }
  async readEnvelope(id: string, opts?: { withState?: boolean }): Promise<SpoolEnvelope> { return (await this.#of(id)).readEnvelope(id, opts); }
  async readMessage(id: string): Promise<Buffer> { return (await this.#of(id)).readMessage(id); }
  async fileBytes(id: string): Promise<number> { return (await this.#of(id)).fileBytes(id); }
  async readForDelivery(id: string, opts?: { hasState?: boolean }): Promise<{ envelope: SpoolEnvelope; message: Buffer }> {
    return (await this.#of(id)).readForDelivery(id, opts);
  }
  async updateState(id: string, state: SpoolState): Promise<void> { return (await this.#of(id)).updateState(id, state); }
  async moveOutOfJournal(id: string): Promise<boolean> { return (await this.#of(id)).moveOutOfJournal(id); }
  async hold(id: string, hold: SpoolHold): Promise<void> { return (await this.#of(id)).hold(id, hold); }
  async release(id: string): Promise<boolean> { return (await this.#of(id)).release(id); }
  async isHeld(id: string): Promise<boolean> { return (await this.#of(id)).isHeld(id); }
  /** Spool.writesConfirmed: the worker spools share the home spool's sync watch. */
  writesConfirmed(): Promise<void> | null { return this.home.writesConfirmed(); }
    async requestAttempt(id: string): Promise<void> { return (await this.#of(id)).requestAttempt(id); }
  /** Spool.requestAttempts for messages of any of the spools: one directory sync per spool. */
  async requestAttempts(ids: readonly string[]): Promise<void> {
    const bySpool = new Map<Spool, string[]>();
    for (const id of ids) {
      const spool = await this.#of(id);
      const own = bySpool.get(spool);
      if (own) own.push(id);
      else bySpool.set(spool, [id]);
    }
    for (const [spool, own] of bySpool) await spool.requestAttempts(own);
  }
  async readDueRequest(id: string): Promise<string | null> { return (await this.#of(id)).readDueRequest(id); }
  async clearDueRequest(id: string, made?: string): Promise<void> { return (await this.#of(id)).clearDueRequest(id, made); }
  async readHold(id: string): Promise<SpoolHold | null> { return (await this.#of(id)).readHold(id); }
  async remove(id: string, opts?: { hasState?: boolean }): Promise<void> {
    const spool = await this.#of(id);
    this.#owner.delete(id);
    return spool.remove(id, opts);
  }

  close(): void {
    for (const s of this.#workers.values()) s.close();
  }
}

/** What the queue runner, bounces and `postern queue` need of a spool: a Spool or a SpoolSet. */
export type QueueSpool = Pick<SpoolSet, 'reserve' | 'freeSpace' | 'newId' | 'create' | 'hasNotice' | 'scan' | 'list' | 'requestRescan' | 'rescanStamp' | 'has'
  | 'readState' | 'readEnvelope' | 'readMessage' | 'fileBytes' | 'readForDelivery' | 'updateState' | 'moveOutOfJournal' | 'remove'
  | 'hold' | 'release' | 'isHeld' | 'readHold' | 'heldIds' | 'requestAttempt' | 'requestAttempts' | 'readDueRequest' | 'clearDueRequest' | 'writesConfirmed'>;
