/**
 * A worker's side of accepting on the listening sockets its supervisor holds (held-socket.ts): told to
 * accept, it gets each listener's socket and listen()s on it; told to stop, it closes its copies (the
 * socket stays open in the supervisor, and in any other worker accepting on it).
 *
 * Near its open-file limit a worker stops accepting by itself and says so: libuv, when accept() fails with
 * EMFILE, accepts and closes every connection queued on the socket (its "EMFILE trick"), which would drop
 * connections another worker, or this one a moment later, could serve. Left in the kernel's queue they wait
 * for a worker with descriptors to spare.
 */
import net from 'node:net';
import { readdirSync, readFileSync } from 'node:fs';

/**
 * Descriptors a worker keeps free for what its sessions open besides their sockets (spool segments and
 * large messages' files, DNS queries, a store connection): it stops accepting with fewer left, and
 * accepts again with twice as many.
 */
export const FILES_KEPT_FREE = 64;

/** Open descriptors against the open-file limit, counted at each heartbeat (Linux /proc; elsewhere unlimited). */
export class FileRoom {
  #limit = Infinity;
  #open = 0;
  /** Connections accepted since the last count. */
  #since = 0;
  #full = false;

  constructor() { this.count(); }

  /** Counts since the limit was last read. */
  #counts = 0;

  /**
   * Count again (each heartbeat, about 20 µs); the limit too every tenth time (`prlimit` may change it under
   * a running process), or while near it.
   */
  count(): void {
    try {
      this.#open = readdirSync('/proc/self/fd').length;
      if (this.#counts++ % 10 === 0 || this.#limit - this.#open < 2 * FILES_KEPT_FREE) {
        const m = /Max open files\s+(\d+|unlimited)/.exec(readFileSync('/proc/self/limits', 'latin1'));
        this.#limit = m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity;
      }
    } catch {
      this.#limit = Infinity;
    }
    this.#since = 0;
    const left = this.#limit - this.#open;
    this.#full = this.#full ? left < 2 * FILES_KEPT_FREE : left < FILES_KEPT_FREE;
  }

  /** One more connection accepted; false when the descriptors left are too few to accept more. */
  accepted(): boolean {
    this.#since++;
    if (this.#limit - this.#open - this.#since < FILES_KEPT_FREE) this.#full = true;
    return !this.#full;
  }

  get full(): boolean { return this.#full; }
  get open(): number { return this.#open + this.#since; }
  get limit(): number { return this.#limit; }
}

export class Accepting {
  readonly #servers = new Map<string, net.Server>();
  readonly #room: FileRoom;
  readonly #onConnection: (listener: string, socket: net.Socket) => void;
  readonly #onFull: () => void;
  readonly #onRoom: () => void;
  readonly #onError: (listener: string, err: Error) => void;
  readonly #onListening: (listener: string) => void;
  #closed = false;

  constructor(opts: { room: FileRoom; onConnection(listener: string, socket: net.Socket): void; onFull(): void; onRoom(): void; onError(listener: string, err: Error): void; onListening(listener: string): void }) {
    this.#onListening = opts.onListening;
    this.#room = opts.room;
    this.#onConnection = opts.onConnection;
    this.#onFull = opts.onFull;
    this.#onRoom = opts.onRoom;
    this.#onError = opts.onError;
  }

  /** Accept on `handle` (a listener's socket from the supervisor) for `listener`. */
  start(listener: string, handle: { close(): void }): void {
    if (this.#closed || this.#room.full) return void handle.close(); // stopping, or no room: the supervisor hears so with the heartbeat
    this.#servers.get(listener)?.close();
    const server = net.createServer((socket) => {
      if (!this.#room.full && !this.#room.accepted()) this.#full();
      this.#onConnection(listener, socket);
    });
    server.on('error', (err) => this.#onError(listener, err));
    server.listen(handle as unknown as net.Server);
    this.#servers.set(listener, server);
    if (server.listening) this.#onListening(listener);
  }

  /** Stop accepting: this process's copies of the sockets close (the sessions they gave go on). */
  stop(): void {
    for (const server of this.#servers.values()) server.close();
    this.#servers.clear();
  }

  /** For good (the worker stops). */
  close(): void {
    this.#closed = true;
    this.stop();
  }

  get accepting(): boolean { return this.#servers.size > 0; }

  /** At each heartbeat: the descriptors counted again; near the limit it stops accepting. True while so. */
  recount(): boolean {
    const was = this.#room.full;
    this.#room.count();
    if (this.#room.full && !was) this.#full();
    else if (!this.#room.full && was) this.#onRoom();
    return this.#room.full;
  }

  /** Near the open-file limit: closing the copies now also ends libuv's accept loop for this turn. */
  #full(): void {
    this.stop();
    this.#onFull();
  }
}
