/**
 * A unix socket's address holds about 100 bytes (sun_path: 108 on Linux, 104 elsewhere), and
 * `<dataDir>/postern.sock` under a deep data directory is longer: binding or connecting to it failed, so
 * `postern status` told a running server "not running". A longer path is reached through its folder's
 * open descriptor (/proc/self/fd/N/name, Linux): the socket is the same file in the data directory, with
 * its permissions.
 */
import { closeSync, openSync } from 'node:fs';
import type { Server } from 'node:net';
import { basename, dirname } from 'node:path';

/** Bytes of a path that bind() and connect() take on every platform. */
const MAX_SOCKET_PATH = 100;

/** `path`, or a short path to the same socket, and what to call once bound or connected. */
export function shortSocketPath(path: string): { path: string; release(): void } {
  if (Buffer.byteLength(path) < MAX_SOCKET_PATH || process.platform !== 'linux') return { path, release: () => undefined };
  const folder = openSync(dirname(path), 'r');
  return { path: `/proc/self/fd/${folder}/${basename(path)}`, release: () => closeSync(folder) };
}

/**
 * `server.listen(path)` on a socket only this user (and root) can connect to from its first moment, whatever the
 * umask (000 makes it 0777). A chmod after the bind leaves a moment in which any local user may connect, and a
 * connection made then stays open. bind() runs within listen() (no cluster worker here), so the narrowed umask
 * covers it and nothing else.
 */
export function listenOwnerOnly(server: Server, path: string, listening: () => void): void {
  const umask = process.umask(0o177);
  try {
    server.listen(path, listening);
  } finally {
    process.umask(umask);
  }
}
