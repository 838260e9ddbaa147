/**
 * Checks a plain-HTTP listener's per-address connection cap (engine/connection-limits/connection-room.ts) with
 * raw sockets from loopback addresses (each 127.x.y.z is another client).
 */
import net from 'node:net';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { until } from './wait.ts';

/** An idle connection from `localAddress`. */
export async function rawHttp(port: number, localAddress: string): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress });
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  return socket;
}

/** Send `GET path` from `localAddress` on a new connection; the reply's bytes, '' when closed (or reset) without one. */
export function getFrom(port: number, localAddress: string, path: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress }, () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
    });
    let reply = '';
    socket.on('data', (d: Buffer) => { reply += d.toString('latin1'); });
    socket.on('error', () => undefined); // a reset: 'close' follows
    socket.once('close', () => resolve(reply));
  });
}

/** What the admin listener logs when an address over its cap gets a slot of its own stalest connection. */
export const ADMIN_MADE_ROOM = 'admin listener: too many connections from this address, the one idle longest closed for each new one';

/**
 * The admin listener's cap (engine/admin/connection-room.ts): `limit` idle connections from `address` are
 * held open; a request from it on one more is answered, and the oldest held one, which asked nothing, is
 * closed for it (no other); another address is answered meanwhile and closes none of them.
 */
export async function assertAdminCapMakesRoom(port: number, opts: { limit: number; address: string; other: string; path: string }): Promise<void> {
  const held: net.Socket[] = [];
  for (let i = 0; i < opts.limit; i++) held.push(await rawHttp(port, opts.address));
  const closedOnes: number[] = [];
  held.forEach((h, i) => h.once('close', () => closedOnes.push(i)));
  try {
    assert.match(await getFrom(port, opts.address, opts.path), /^HTTP\/1\.1 200 /, `a request on connection ${opts.limit + 1} from ${opts.address} is answered`);
    await until('the oldest held connection closed for it', () => closedOnes.length > 0);
    assert.match(await getFrom(port, opts.other, opts.path), /^HTTP\/1\.1 200 /, 'another address is answered');
    assert.deepEqual(closedOnes, [0], 'only the oldest of that address, and not by a timeout');
  } finally {
    for (const h of held) h.destroy();
  }
}
