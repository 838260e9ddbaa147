/**
 * A listener's socket that the supervisor holds and its workers accept on (`workerChoice: fill`): the
 * supervisor binds it and never accepts; each worker it tells to accept gets the socket over its IPC
 * channel, listen()s and accepts on it, and closes its copy when told to stop. The port stays open while
 * workers die or are replaced: the supervisor's descriptor keeps the socket listening, and the kernel
 * queues new connections in its backlog until a worker accepts them.
 *
 * Why an internal of Node's, kept to this file: Node has no public way to bind a TCP socket without
 * accepting on it in the same process (net.Server.listen() accepts at once). `listen({ reusePort: true })`
 * (Node 24, checked) binds one port from several processes, but each process accepts on a socket of its
 * own: the kernel hashes new connections over the sockets, so a hung worker's share waits until it is
 * killed, a worker's socket that closes resets the connections queued on it, and the supervisor could not
 * choose who accepts. node:cluster's `SCHED_NONE` mode shares one socket the way done here, with the same
 * function: net._createServerHandle binds a TCP handle without listen(), and child_process's send() passes a
 * raw handle (documented: "net.Native" handles), which the worker's net.Server.listen(handle) takes.
 */
import net from 'node:net';
import { constants } from 'node:os';
import { lookup } from 'node:dns/promises';
import { getSystemErrorName } from 'node:util';

/** A bound TCP handle (tcp_wrap's TCP object). */
export interface TcpHandle {
  getsockname(out: Record<string, unknown>): number;
  close(): void;
}

const internals = net as unknown as {
  _createServerHandle(address: string, port: number, addressType: number, fd: undefined, flags: number): TcpHandle | number;
};

/** libuv's UV_TCP_REUSEPORT flag for bind (uv.h), which listen({ reusePort: true }) passes too. */
const UV_TCP_REUSEPORT = 2;

export interface HeldSocket {
  readonly handle: TcpHandle;
  readonly address: string;
  readonly port: number;
}

/**
 * Bind `host:port` (a name is resolved as net.Server.listen() resolves it) without listening: the first
 * worker's listen() makes it listen. SO_REUSEPORT is set so that a server started again while a worker of the
 * one before still finishes its sessions (holding that server's socket until it closes its copy, at once
 * once it runs) can bind the port; `earlierServerAlive` says whether such a worker runs, checked only when a
 * plain bind finds the port taken, so that any other program on the port still fails the start as before.
 */
export async function holdSocket(host: string, port: number, earlierServerAlive: () => number | null): Promise<HeldSocket> {
  const address = net.isIP(host) ? host : (await lookup(host)).address;
  const type = net.isIPv6(address) ? 6 : 4;
  // The probe (not for port 0: any free port): the port free for a socket of our own, as a plain listen() finds it.
  const probe = port === 0 ? null : boundOrError(internals._createServerHandle(address, port, type, undefined, 0));
  if (typeof probe === 'number' && !(getSystemErrorName(probe) === 'EADDRINUSE' && earlierServerAlive() !== null)) throw bindError(probe, address, port);
  if (typeof probe !== 'number') probe?.close();
  const handle = boundOrError(internals._createServerHandle(address, port, type, undefined, UV_TCP_REUSEPORT));
  if (typeof handle === 'number') throw bindError(handle, address, port);
  const bound: Record<string, unknown> = {};
  handle.getsockname(bound);
  return { handle, address: String(bound.address), port: Number(bound.port) };
}

/**
 * The handle, or the bind's error number. libuv keeps a bind's EADDRINUSE for the listen() that follows (its
 * delayed_error) and reports the bind done: such a handle is bound to nothing. The supervisor never listens on
 * it, and in the worker it reached the flag stays behind (only the descriptor travels), so listen() there bound
 * the socket to a port the kernel chose on every interface (0.0.0.0): with another program on the port, the
 * server said `listening` and took connections on a random port of every address instead.
 */
function boundOrError(handle: TcpHandle | number): TcpHandle | number {
  if (typeof handle === 'number') return handle;
  const address: Record<string, unknown> = {};
  if (handle.getsockname(address) === 0 && typeof address.port === 'number') return handle;
  handle.close();
  return -constants.errno.EADDRINUSE;
}

/** The error net.Server.listen() would give, e.g. "listen EADDRINUSE: address already in use 127.0.0.1:25". */
function bindError(errno: number, address: string, port: number): Error {
  const code = getSystemErrorName(errno);
  const text = code === 'EADDRINUSE' ? 'address already in use' : code === 'EACCES' ? 'permission denied' : 'cannot bind';
  return Object.assign(new Error(`listen ${code}: ${text} ${address}:${port}`), { code });
}
