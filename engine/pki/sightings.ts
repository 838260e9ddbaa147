/**
 * When each client certificate was seen (first and last), on which listener, for which identity, with
 * which chain verdict: `postern pki list` shows it, the expiry watch (expiry.ts) reads it.
 *
 * The hot path only touches a Map: a certificate's record is written at most once a minute (SIGHTING_MS),
 * by a timer, off the connection. Every process writes its own file, `<dataDir>/certificates/seen-<process>.json`
 * (a worker, the single server), whole and atomically; readers merge them. No two processes ever write one file.
 */
import { readdir, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { readIfExists, writeFileAtomic } from './atomic-file.ts';

export interface Sighting {
  /** SHA-256 of the certificate (DER), lowercase hex. */
  fingerprintSha256: string;
  pinSha256: string;
  serial: string;
  subject: string;
  issuer: string;
  notAfter: string;
  listener: string;
  /** The identity the certificate gave (pin or field), null when none. */
  identity: string | null;
  /**
   * The identity it gave at its last sighting that gave one, kept when later ones give none (an expired or
   * unpinned device certificate still names its owner); null for a certificate that never named anyone.
   */
  knownAs?: string | null;
  /** `verified`, `pinned`, or why the chain failed (expired, revoked, unknown-issuer, …). */
  verdict: string;
  firstSeen: string;
  lastSeen: string;
  /** The connection id of the last sighting written (the log's `cid`). */
  lastConnection: string;
}

/** A certificate's record is rewritten at most this often. */
export const SIGHTING_MS = 60_000;
/** Records not seen for this long are dropped when a file is written. */
const KEEP_MS = 400 * 86400_000;
/** At most this many certificates per process (a few MB of JSON). */
const MAX_RECORDS = 20_000;
/**
 * Of those, at most this many that never named anyone: any client may present a new made-up certificate at each
 * handshake, and each would otherwise take a record, rewritten with the whole file every second, from the
 * devices the records are for. Kept at all for `postern pins learn` (a new device's first connection).
 */
export const MAX_NAMELESS_RECORDS = 2_000;

export function sightingsDir(dataDir: string): string { return join(dataDir, 'certificates'); }

type Fresh = Omit<Sighting, 'firstSeen' | 'lastSeen' | 'knownAs'>;

export class SightingRecorder {
  readonly #file: string;
  readonly #delayMs: number;
  readonly #retryMs: number;
  #closed = false;
  readonly #records = new Map<string, Sighting>();
  /**
   * When each record was last marked for writing, in monotonic ms (performance.now()): within SIGHTING_MS it is
   * not marked again. Not the wall clock: set back a day (an NTP step, a VM restored from a snapshot), no minute
   * would have passed for a day, and a device in use all that time would look unseen (no expiry warning for it).
   */
  readonly #marked = new Map<string, number>();
  #dirty = false;
  #timer: NodeJS.Timeout | null = null;
  #loaded: Promise<void> | null = null;
  #writing: Promise<void> = Promise.resolve();
  readonly #onError: (err: unknown) => void;
  readonly #onWarning: (message: string) => void;
  /** The file on disk is a newer release's: left as it is, and nothing written over it. */
  #refused = false;

  /**
   * `process`: this process's name in the file name (`single`, `worker-2`). `delayMs`: from the first change
   * to the write. `retryMs`: from a failed write (a full disk) to the next try.
   */
  constructor(dataDir: string, process: string, opts: { delayMs?: number; retryMs?: number; onError?: (err: unknown) => void; onWarning?: (message: string) => void } = {}) {
    this.#file = join(sightingsDir(dataDir), `seen-${process}.json`);
    this.#delayMs = opts.delayMs ?? 1000;
    this.#retryMs = opts.retryMs ?? 30_000;
    this.#onError = opts.onError ?? (() => undefined);
    this.#onWarning = opts.onWarning ?? (() => undefined);
  }

  get file(): string { return this.#file; }

  /** This certificate's sighting was recorded less than a minute ago (seen() would change nothing). `elapsed`: monotonic ms. */
  seenRecently(fingerprintSha256: string, elapsed = performance.now()): boolean {
    const last = this.#marked.get(fingerprintSha256);
    return last !== undefined && elapsed - last < SIGHTING_MS;
  }

  /**
   * A handshake presented this certificate. Cheap: one Map lookup unless its minute is up. `now` (wall clock)
   * is what the record says; `elapsed` (monotonic) paces it.
   */
  seen(s: Fresh, now = Date.now(), elapsed = performance.now()): void {
    if (this.seenRecently(s.fingerprintSha256, elapsed)) return;
    this.#marked.set(s.fingerprintSha256, elapsed);
    const at = new Date(now).toISOString();
    const old = this.#records.get(s.fingerprintSha256);
    const knownAs = s.identity ?? old?.knownAs ?? old?.identity ?? null;
    this.#records.set(s.fingerprintSha256, { ...s, knownAs, firstSeen: old?.firstSeen ?? at, lastSeen: at });
    this.#dirty = true;
    this.#schedule(this.#delayMs);
  }

  #schedule(delayMs: number): void {
    if (this.#timer || this.#closed) return;
    this.#timer = setTimeout(() => { this.#timer = null; void this.flush().catch(this.#onError); }, delayMs);
    this.#timer.unref();
  }

  /** Writes the file now if anything changed (also at close). */
  flush(): Promise<void> {
    // After a failed write (a full disk) the next one still runs: the chain goes on from a settled promise.
    this.#writing = this.#writing.catch(() => undefined).then(async () => {
      if (!this.#dirty) return;
      try {
        // A failed read is not remembered: the next flush reads again.
        await (this.#loaded ??= this.#load().catch((err: unknown) => { this.#loaded = null; throw err; }));
        this.#dirty = false;
        this.#prune(Date.now() - KEEP_MS);
        if (this.#refused) return;
        const certificates = Object.fromEntries(this.#records);
        await writeFileAtomic(this.#file, `${JSON.stringify({ version: 1, certificates })}\n`);
      } catch (err) {
        // Held to the same bounds unwritten: a file that cannot be read (another user's, a folder in its place, a
        // failing disk) stays so for as long as nobody looks, while every made-up certificate adds a record.
        this.#prune(Date.now() - KEEP_MS);
        // Still to be written: tried again later, not only when another certificate comes.
        this.#dirty = true;
        this.#schedule(this.#retryMs);
        throw err;
      }
    });
    return this.#writing;
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    await this.flush().catch(this.#onError);
  }

  /**
   * Forget records not seen since `cutoff`, beyond MAX_NAMELESS_RECORDS the least recently seen of those that never
   * named anyone, and beyond MAX_RECORDS the least recently seen of all (an MX meets many).
   */
  #prune(cutoff: number): void {
    for (const [fp, r] of this.#records) if (Date.parse(r.lastSeen) < cutoff) this.#forget(fp);
    const nameless = [...this.#records].filter(([, r]) => (r.knownAs ?? r.identity) === null);
    this.#forgetOldest(nameless, nameless.length - MAX_NAMELESS_RECORDS);
    this.#forgetOldest([...this.#records], this.#records.size - MAX_RECORDS);
  }

  #forgetOldest(records: Array<[string, Sighting]>, count: number): void {
    if (count <= 0) return;
    records.sort(([, a], [, b]) => a.lastSeen.localeCompare(b.lastSeen));
    for (const [fp] of records.slice(0, count)) this.#forget(fp);
  }

  #forget(fp: string): void {
    this.#records.delete(fp);
    this.#marked.delete(fp);
  }

  /** What an earlier run of this process wrote: kept, so a restart does not forget first-seen times. */
  async #load(): Promise<void> {
    const file = await readSightingsFile(this.#file);
    if (file.newer !== undefined) {
      this.#refused = true;
      this.#onWarning(`${this.#file}: version ${file.newer}, written by a newer release of Postern: left as it is, and this process records no client certificate sightings`);
      return;
    }
    if (file.unreadable !== undefined) {
      // Not written over unseen: kept aside (readers take seen-*.json only) for whoever wants to look.
      const aside = join(dirname(this.#file), `damaged-${Date.now()}-${basename(this.#file)}`);
      await rename(this.#file, aside);
      this.#onWarning(`${this.#file}: unreadable (${file.unreadable}): moved to ${aside}; this process's client certificate sightings start afresh`);
    }
    for (const [fp, r] of Object.entries(file.records)) {
      const mine = this.#records.get(fp);
      if (mine) mine.firstSeen = r.firstSeen < mine.firstSeen ? r.firstSeen : mine.firstSeen;
      else this.#records.set(fp, r);
    }
  }
}

interface SightingsFile {
  records: Record<string, Sighting>;
  /** Why the file cannot be read (written atomically, so never half: hand-edited, or damaged on disk). */
  unreadable?: string;
  /** The version of a newer release's file. */
  newer?: number;
}

async function readSightingsFile(file: string): Promise<SightingsFile> {
  const text = await readIfExists(file);
  if (text === null) return { records: {} };
  let parsed: { version?: unknown; certificates?: unknown } | null;
  try {
    parsed = JSON.parse(text) as typeof parsed;
  } catch (err) {
    return { records: {}, unreadable: (err as Error).message };
  }
  const version = parsed?.version;
  if (typeof version === 'number' && version > 1) return { records: {}, newer: version };
  const certificates = parsed?.certificates;
  if (version !== 1 || typeof certificates !== 'object' || certificates === null || Array.isArray(certificates)) {
    return { records: {}, unreadable: 'not a version 1 sightings file' };
  }
  return { records: certificates as Record<string, Sighting> };
}

/** Every process's sightings merged: earliest first sighting, the latest one's other facts. */
export async function readSightings(dataDir: string): Promise<Map<string, Sighting>> {
  const dir = sightingsDir(dataDir);
  const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => /^seen-.+\.json$/.test(n));
  const merged = new Map<string, Sighting>();
  for (const name of names) {
    // A file this release cannot read (damaged, or a newer release's) adds nothing; its process's recorder warns.
    for (const [fp, r] of Object.entries((await readSightingsFile(join(dir, name))).records)) {
      const m = merged.get(fp);
      if (!m) merged.set(fp, { ...r });
      else merged.set(fp, { ...(r.lastSeen > m.lastSeen ? r : m), firstSeen: r.firstSeen < m.firstSeen ? r.firstSeen : m.firstSeen });
    }
  }
  return merged;
}
