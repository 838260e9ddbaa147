/** A connection's client address as Postern keys it, from the socket alone (no SMTP session needed). */
import type net from 'node:net';

/** The key connections are counted under: an IPv4 client of a dual-stack listener by its IPv4 address. */
export function clientAddress(socket: net.Socket): string {
  return (socket.remoteAddress ?? '').replace(/^::ffff:/i, '').toLowerCase();
}
