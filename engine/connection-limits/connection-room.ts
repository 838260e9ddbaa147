/**
 * The connection slots of a Node HTTP(S) server (the admin listener: 64 in all, admin.maxConnectionsPerIp per
 * address; the account page: 256, accounts.maxConnectionsPerIp), given to whoever asks for something rather
 * than to whoever came first.
 *
 * A full server (or a full address) used to close each new connection at once, while connections that sent
 * nothing, or a request a byte at a time, were cut only by the 10 s header or handshake timeout: a client
 * that opened them again as each was cut held the slots for good. On loopback every local client shares one
 * address, so any local user kept the Prometheus scrape on 127.0.0.1 out of the admin listener with 8
 * connections; 16 addresses kept every user off the account page. Now a new connection over a cap closes, to
 * take its place, a connection of that address (or, over the server's whole cap, of any address): one that
 * never sent a byte first, then one that sent some but made no progress, then one that did (TLS handshake
 * done, request received, answer made), each the one that has gone longest without making progress (the
 * order of closing-order.ts). One
 * whose request is being answered is never closed for another, nor one whose answer is being written while
 * its client takes the bytes (see lookAtWriting), nor one just accepted, before it could be
 * read (else a flood of new connections would close a client's before its request is read). When none is
 * left to close, the new one is closed as it is accepted, unanswered (before any TLS handshake), as before.
 */
import type net from 'node:net';
import type http from 'node:http';
import type https from 'node:https';
import { firstToClose, nextProgress, type Standing } from './closing-order.ts';
import { envKnob } from '../config/env-knob.ts';

export interface RoomLimits {
  /** All connections open at once. */
  maxConnections: number;
  /** RESPONSE_DEADLINE_MS unless given (a test of the deadline itself gives a short one). */
  responseDeadlineMs?: number;
  /** Per counted client address (not for unix-socket clients, which have none); omitted: no per-address cap. */
  perAddress?: {
    /** Read at each accept (a reload may change it). */
    limit(): number;
    /** What a client address is counted as: an IPv6 host usually has a whole /64. */
    countedAs(address: string): string;
    /** An address went over its cap and nothing could be closed for it: once until it is back under. */
    refused?(client: string, limit: number): void;
    /** An address went over its cap and its stalest connection was closed for the new one: once per episode. */
    madeRoom?(client: string, limit: number): void;
  };
}

interface Slot {
  socket: net.Socket;
  address: string | null;
  /** When the connection last made progress: a sequence number. */
  progress: number;
  /** Requests received and not yet answered. */
  answering: number;
  /** Accepted in this turn of the event loop or the next: its first bytes have not been read yet. */
  fresh: boolean;
  /** Made progress since it was accepted: its TLS handshake done, or a request received. */
  advanced: boolean;
  /**
   * An answer made whose bytes have not all left: what was still queued for the socket when last looked at,
   * and whether that went down since the look before (its client reads it). Null: none being written.
   */
  writing: { queued: number; moving: boolean } | null;
}

/**
 * An answer must have left (been taken by the client's socket) within this long of its request (ms), on every server
 * that shares its room here. A client that pipelines requests and never reads the answers held its connection for
 * good once the socket buffers were full: no timeout applies to a connection writing (its requests are whole, it
 * is not idle, and keepAliveTimeout counts only once an answer has left). The admin listener had this deadline;
 * the account page, which faces the users' networks, had none. A client reading a byte at a time is cut the same
 * way. Long enough for the admin's /status to count a large spool.
 */
export const RESPONSE_DEADLINE_MS = 30_000;
/**
 * The deadline in force where a server gives none: RESPONSE_DEADLINE_MS, or POSTERN_RESPONSE_DEADLINE_MS (ms), read at
 * each request: a test of a whole server (the account page inside startTestServer) shortens it rather than wait 30 s.
 */
export function defaultResponseDeadlineMs(): number {
  return envKnob('POSTERN_RESPONSE_DEADLINE_MS', RESPONSE_DEADLINE_MS);
}

/**
 * Bytes the socket has not yet handed to the kernel (libuv's queue; live, unlike `writableLength`, which
 * counts a write until it is all out). A client that reads makes room in the kernel's buffers, and this goes
 * down; one that does not read leaves it where it is once those buffers are full.
 */
const queuedOf = (socket: net.Socket): number =>
  (socket as unknown as { _handle?: { writeQueueSize?: number } })._handle?.writeQueueSize ?? 0;

/**
 * One TCP connection's key, the same for the socket 'connection' gives and for the TLS socket a request
 * comes on (HTTPS wraps the first in the second); a unix-socket client has no address: its socket itself.
 */
const keyOf = (socket: net.Socket): net.Socket | string =>
  socket.remoteAddress === undefined ? socket : `${socket.remoteAddress}|${socket.remotePort}`;

/** Count `server`'s connections and make room for new ones as above; in place of `server.maxConnections`. */
export function shareConnectionRoom(server: http.Server | https.Server, limits: RoomLimits): void {
  const slots = new Map<net.Socket | string, Slot>();
  const perAddress = new Map<string, number>();
  const reported = new Set<string>();

  const standingOf = (slot: Slot): Standing | null =>
    slot.fresh || slot.answering > 0 || slot.writing?.moving || slot.socket.destroyed
      ? null
      : { advanced: slot.advanced, sentAnything: slot.socket.bytesRead > 0, progress: slot.progress };
  const stalest = (address?: string): Slot | null =>
    firstToClose(slots.values(), (slot) => (address !== undefined && slot.address !== address ? null : standingOf(slot)));
  /** `replaced`: closed for a new connection of its address, which takes its place (the episode goes on). */
  const forget = (key: net.Socket | string, slot: Slot, replaced = false): void => {
    if (slots.get(key) !== slot) return;
    slots.delete(key);
    if (slot.address === null) return;
    const left = (perAddress.get(slot.address) ?? 1) - 1;
    if (left > 0) perAddress.set(slot.address, left); else perAddress.delete(slot.address);
    if (!replaced && left < (limits.perAddress?.limit() ?? Infinity)) reported.delete(slot.address);
  };
  const evict = (slot: Slot, replaced: boolean): void => {
    forget(keyOf(slot.socket), slot, replaced);
    slot.socket.destroy();
  };
  /**
   * Once per new connection over a cap: which answers being written moved since the last look. Their
   * connections are not closed for it; an answer its client stopped reading is (the admin listener's
   * RESPONSE_DEADLINE_MS bounds how long a slow one may take).
   */
  const lookAtWriting = (): void => {
    for (const slot of slots.values()) {
      if (!slot.writing) continue;
      const queued = queuedOf(slot.socket);
      slot.writing.moving = queued < slot.writing.queued;
      slot.writing.queued = queued;
    }
  };
  const refuse = (socket: net.Socket): void => {
    socket.on('error', () => undefined);
    socket.destroy();
  };
  const progressed = (socket: net.Socket, change = 0): void => {
    const slot = slots.get(keyOf(socket));
    if (!slot) return;
    slot.answering += change;
    slot.progress = nextProgress();
    slot.advanced = true;
  };

  // First among the 'connection' listeners: the HTTP or TLS one after it sees a closed socket and lets go.
  server.prependListener('connection', (socket: net.Socket) => {
    const remote = socket.remoteAddress;
    const per = limits.perAddress;
    const address = remote === undefined || !per ? null : per.countedAs(remote);
    const overAddress = address !== null && per !== undefined && (perAddress.get(address) ?? 0) >= per.limit();
    if (overAddress || slots.size >= limits.maxConnections) lookAtWriting();
    if (overAddress && address !== null && per) {
      const victim = stalest(address);
      const first = !reported.has(address);
      reported.add(address);
      if (!victim) {
        if (first) per.refused?.(address, per.limit());
        return refuse(socket);
      }
      if (first) per.madeRoom?.(address, per.limit());
      evict(victim, true);
    }
    if (slots.size >= limits.maxConnections) {
      const victim = stalest();
      if (!victim) return refuse(socket);
      evict(victim, victim.address === address);
    }
    const key = keyOf(socket);
    const slot: Slot = { socket, address, progress: nextProgress(), answering: 0, fresh: true, advanced: false, writing: null };
    slots.set(key, slot);
    if (address !== null) perAddress.set(address, (perAddress.get(address) ?? 0) + 1);
    // Fresh until the poll phase after this one has read what the client sent with its connect.
    setImmediate(() => setImmediate(() => { slot.fresh = false; }));
    socket.once('close', () => forget(key, slot));
  });
  server.on('secureConnection', (socket: net.Socket) => progressed(socket));
  // Before the handler, which may answer at once.
  server.prependListener('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket;
    progressed(socket, +1);
    // Answered once the answer is made (res.end called), or the exchange ended without one. Not at 'finish' nor
    // 'prefinish': an answer pipelined behind one its client does not read waits unsent, and its connection was
    // then never free to close for a new one while it held the slot for RESPONSE_DEADLINE_MS.
    let done = false;
    const answered = (): void => {
      if (done) return;
      done = true;
      progressed(socket, -1);
    };
    const end = res.end;
    res.end = function (this: http.ServerResponse, ...args: unknown[]) {
      answered();
      const result = (end as (...a: unknown[]) => http.ServerResponse).apply(this, args);
      // Written out yet? Else it is being written: counted as busy while its bytes move (see lookAtWriting).
      // Its own bytes only when it went to the socket (not queued behind an unread answer before it).
      const slot = slots.get(keyOf(socket));
      if (slot && !res.writableFinished && res.socket === socket) {
        const writing = { queued: queuedOf(slot.socket), moving: false }; // the TCP socket (under TLS too)
        slot.writing = writing;
        const over = (): void => { if (slot.writing === writing) slot.writing = null; };
        res.once('finish', over).once('close', over);
      }
      return result;
    } as typeof res.end;
    res.once('close', answered);
    const deadline = setTimeout(() => res.destroy(), limits.responseDeadlineMs ?? defaultResponseDeadlineMs()).unref();
    res.once('close', () => clearTimeout(deadline));
  });
}
