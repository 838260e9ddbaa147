/**
 * The admin listener's connection slots (64 in all, admin.maxConnectionsPerIp per address), given to whoever
 * asks for something rather than to whoever came first.
 *
 * A full listener (or a full address) used to close each new connection at once. Connections that send
 * nothing, or a request a byte at a time, are cut only after the 10 s header timeout: a client that opened
 * them again as each was cut held the slots for good. On loopback every local client shares one address, so
 * any local user kept the Prometheus scrape on 127.0.0.1 out with 8 connections; with 8 addresses, every
 * client. Now a new connection over a cap closes, to take its place, the connection of that address (or, over
 * the listener's 64, of any address) that has gone longest without making progress: no request received, no
 * answer finished. A connection whose request is being answered is never closed for another, nor one just
 * accepted before it could be read (else a flood of new connections would close a scraper's before its
 * request is read). When none is left to close, the new one is closed unanswered as before.
 */
import type net from 'node:net';
import type http from 'node:http';

export interface RoomLimits {
  /** All connections open at once. */
  maxConnections: number;
  /** Per counted client address (not for unix-socket clients, which have none); omitted: no per-address cap. */
  perAddress?: {
    limit: number;
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
  /** When the connection last made progress (accepted, request received, answer finished): a sequence number. */
  progress: number;
  /** Requests received and not yet answered whole. */
  answering: number;
  /** Accepted in this turn of the event loop or the next: its first bytes have not been read yet. */
  fresh: boolean;
}

export interface ConnectionRoom {
  /**
   * `req`'s answer is made and handed to its socket (res.end called). From then on the connection may be closed
   * for another: its client has what it asked for, or has it waiting in its socket and is not reading it (the
   * answer's 'close' would wait for that client: RESPONSE_DEADLINE_MS).
   */
  answered(req: http.IncomingMessage): void;
}

/** Count `server`'s connections and make room for new ones as above; replaces `server.maxConnections`. */
export function shareConnectionRoom(server: http.Server, limits: RoomLimits): ConnectionRoom {
  const slots = new Map<net.Socket, Slot>();
  const perAddress = new Map<string, number>();
  const reported = new Set<string>();
  let clock = 0;

  const stalest = (address: string | null | undefined): Slot | null => {
    let best: Slot | null = null;
    for (const slot of slots.values()) {
      if (address !== undefined && slot.address !== address) continue;
      if (slot.fresh || slot.answering > 0 || slot.socket.destroyed) continue;
      if (!best || slot.progress < best.progress) best = slot;
    }
    return best;
  };
  const evict = (slot: Slot): void => {
    forget(slot);
    slot.socket.destroy();
  };
  const forget = (slot: Slot): void => {
    if (!slots.delete(slot.socket) || slot.address === null) return;
    const left = (perAddress.get(slot.address) ?? 1) - 1;
    if (left > 0) perAddress.set(slot.address, left); else perAddress.delete(slot.address);
    if (left < (limits.perAddress?.limit ?? Infinity)) reported.delete(slot.address);
  };
  const refuse = (socket: net.Socket): void => {
    socket.on('error', () => undefined);
    socket.destroy();
  };

  // First among the 'connection' listeners: the HTTP one after it sees a closed socket and lets go.
  server.prependListener('connection', (socket: net.Socket) => {
    const remote = socket.remoteAddress;
    const per = limits.perAddress;
    const address = remote === undefined || !per ? null : per.countedAs(remote);
    if (address !== null && per && (perAddress.get(address) ?? 0) >= per.limit) {
      const victim = stalest(address);
      const first = !reported.has(address);
      reported.add(address);
      if (!victim) {
        if (first) per.refused?.(address, per.limit);
        return refuse(socket);
      }
      if (first) per.madeRoom?.(address, per.limit);
      evict(victim);
    }
    if (slots.size >= limits.maxConnections) {
      const victim = stalest(undefined);
      if (!victim) return refuse(socket);
      evict(victim);
    }
    const slot: Slot = { socket, address, progress: ++clock, answering: 0, fresh: true };
    slots.set(socket, slot);
    if (address !== null) perAddress.set(address, (perAddress.get(address) ?? 0) + 1);
    // Fresh until the poll phase after this one has read what the client sent with its connect.
    setImmediate(() => setImmediate(() => { slot.fresh = false; }));
    socket.once('close', () => forget(slot));
  });
  // Before the handler, which may answer at once.
  const answering = new WeakSet<http.IncomingMessage>();
  server.prependListener('request', (req: http.IncomingMessage) => {
    const slot = slots.get(req.socket);
    if (!slot) return;
    answering.add(req);
    slot.answering++;
    slot.progress = ++clock;
  });
  return {
    answered(req) {
      const slot = slots.get(req.socket);
      if (!slot || !answering.delete(req)) return;
      slot.answering--;
      slot.progress = ++clock;
    },
  };
}
