/**
 * The address connections are counted and limited under: an IPv4 client of a dual-stack listener by its
 * IPv4 address. Shared by the listener and the supervisor that hands it connections (their counts meet).
 */
import type net from 'node:net';

export function clientAddress(socket: net.Socket): string {
  return (socket.remoteAddress ?? '').replace(/^::ffff:/i, '').toLowerCase();
}
