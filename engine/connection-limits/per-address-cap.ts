/**
 * A cap on the connections one client address holds open on a Node server (the account page's HTTPS; the
 * admin listener has its own, engine/admin/connection-room.ts, that closes an idle connection for a new one):
 * the server's own maxConnections bounds the crowd, this keeps one address from being the whole crowd.
 *
 * A connection over the cap is closed as it is accepted, before a byte is read and before any TLS handshake,
 * rather than answered `429`: a 429 needs the request read (and, on HTTPS, a handshake first), which is the
 * slow, costly part a client that holds connections open controls; closed at once, the extra connection
 * costs an accept and holds none of the server's slots. A browser reuses the connections it already has.
 */
import type net from 'node:net';

export interface PerAddressCapOptions {
  /** Connections one address may hold; read at each accept (a reload may change it). */
  limit(): number;
  /** An address went over the cap: called once until its count comes back under (for one log line, not one per connection). */
  refused(address: string, limit: number): void;
  /**
   * What a client address is counted as (default: itself). An IPv6 host usually has a whole /64: counted per
   * address, one client could hold the cap from each of its addresses, and so the whole page.
   */
  countedAs?(address: string): string;
}

/** Count every connection `server` accepts by its client address, from accept to close. */
export function capConnectionsPerAddress(server: net.Server, opts: PerAddressCapOptions): void {
  const open = new Map<string, number>();
  const reported = new Set<string>();
  // First among the 'connection' listeners: the HTTP or TLS one after it sees a closed socket and lets go.
  server.prependListener('connection', (socket: net.Socket) => {
    const remote = socket.remoteAddress;
    if (remote === undefined) return; // a unix socket (no client address), or one reset before this
    const address = opts.countedAs ? opts.countedAs(remote) : remote;
    const limit = opts.limit();
    const count = (open.get(address) ?? 0) + 1;
    if (count > limit) {
      socket.on('error', () => undefined);
      socket.destroy();
      if (!reported.has(address)) {
        reported.add(address);
        opts.refused(address, limit);
      }
      return;
    }
    open.set(address, count);
    socket.once('close', () => {
      const left = (open.get(address) ?? 1) - 1;
      if (left > 0) open.set(address, left); else open.delete(address);
      if (left < opts.limit()) reported.delete(address);
    });
  });
}
