/**
 * The durable spool. A message is committed when `<id>.eml` and then `<id>.json` are written and
 * fsynced, and the directory entry is fsynced too; only then may the SMTP side say 250. An `.eml`
 * without its `.json` was never acknowledged and is removed at startup.
 */
import { mkdir, open, type FileHandle, readdir, rename, rm, stat, unlink, readFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { DirectorySyncer } from './fsync.ts';
import type { SpoolEnvelope } from './envelope.ts';

const ID_PATTERN = /^[0-9a-z]{8,32}$/;

export class Spool {
  readonly queueDir: string;
  readonly #dirSync: DirectorySyncer;

  readonly root: string;

  constructor(root: string) {
    this.root = root;
    this.queueDir = join(root, 'queue');
    this.#dirSync = new DirectorySyncer(this.queueDir);
  }

  async init(): Promise<{ removedOrphans: number }> {
    await mkdir(this.queueDir, { recursive: true, mode: 0o700 });
    let removedOrphans = 0;
    const names = new Set(await readdir(this.queueDir));
    for (const name of names) {
      // Orphans: message bodies without an envelope (never acknowledged) and stale temporary files.
      const orphanBody = name.endsWith('.eml') && !names.has(name.replace(/\.eml$/, '.json'));
      if (orphanBody || name.endsWith('.tmp')) {
        await rm(join(this.queueDir, name), { force: true });
        removedOrphans++;
      }
    }
    return { removedOrphans };
  }

  /** Time-ordered, unguessable queue id. */
  newId(): string {
    return Date.now().toString(36).padStart(9, '0') + randomBytes(5).toString('hex');
  }

  static isId(id: string): boolean { return ID_PATTERN.test(id); }

  messagePath(id: string): string { return join(this.queueDir, `${id}.eml`); }
  envelopePath(id: string): string { return join(this.queueDir, `${id}.json`); }

  /** Start writing a message body. */
  create(id: string): SpoolWriter {
    return new SpoolWriter(this, id, this.#dirSync);
  }

  async readEnvelope(id: string): Promise<SpoolEnvelope> {
    return JSON.parse(await readFile(this.envelopePath(id), 'utf8')) as SpoolEnvelope;
  }

  /** Atomically replace an envelope (write temp, fsync, rename, fsync dir). */
  async updateEnvelope(env: SpoolEnvelope): Promise<void> {
    const tmp = join(this.queueDir, `${env.id}.json.${randomBytes(4).toString('hex')}.tmp`);
    await writeFileSynced(tmp, JSON.stringify(env));
    await rename(tmp, this.envelopePath(env.id));
    await this.#dirSync.sync();
  }

  /** Remove a finished message: envelope first, so a crash in between leaves an orphan body, not a ghost. */
  async remove(id: string): Promise<void> {
    await unlink(this.envelopePath(id)).catch(ignoreMissing);
    await unlink(this.messagePath(id)).catch(ignoreMissing);
    await this.#dirSync.sync();
  }

  async list(): Promise<string[]> {
    const names = await readdir(this.queueDir);
    return names.filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -5)).filter((id) => Spool.isId(id)).sort();
  }

  async messageSize(id: string): Promise<number> { return (await stat(this.messagePath(id))).size; }
}

/** Writes one message body; small chunks are batched so a message costs a few write calls. */
export class SpoolWriter {
  readonly spool: Spool;
  readonly id: string;
  readonly #handle: Promise<FileHandle>;
  readonly #dirSync: DirectorySyncer;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #bytes = 0;

  constructor(spool: Spool, id: string, dirSync: DirectorySyncer) {
    this.spool = spool;
    this.id = id;
    this.#dirSync = dirSync;
    this.#handle = open(spool.messagePath(id), 'wx', 0o600);
    this.#handle.catch(() => undefined); // surfaced by write/commit
  }

  get bytes(): number { return this.#bytes; }

  async write(chunk: Buffer): Promise<void> {
    this.#bytes += chunk.length;
    this.#pending.push(chunk);
    this.#pendingBytes += chunk.length;
    if (this.#pendingBytes >= 256 * 1024) await this.#flush();
  }

  /** Make the body and its envelope durable. Resolves only when both would survive a crash. */
  async commit(envelope: SpoolEnvelope): Promise<void> {
    await this.#flush();
    const handle = await this.#handle;
    await handle.sync();
    await handle.close();
    await writeFileSynced(this.spool.envelopePath(this.id), JSON.stringify({ ...envelope, size: this.#bytes }));
    await this.#dirSync.sync();
  }

  /** Drop the body (message refused, or the client left before the end of DATA). */
  async abort(): Promise<void> {
    this.#pending = [];
    const handle = await this.#handle.catch(() => null);
    await handle?.close().catch(() => undefined);
    await unlink(this.spool.messagePath(this.id)).catch(ignoreMissing);
  }

  async #flush(): Promise<void> {
    const handle = await this.#handle;
    const buffers = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    if (buffers.length) await handle.writev(buffers);
  }
}

async function writeFileSynced(path: string, data: string): Promise<void> {
  const handle = await open(path, 'w', 0o600);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== 'ENOENT') throw err;
}

