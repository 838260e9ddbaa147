/**
 * A cap on the bytes a Redis connection may send toward one reply. The client buffers a reply whole before
 * handing it over, with no limit of its own: a broken or hostile server (or anything else answering on the
 * port) sending `$999999999` and data forever, or an endless array, grew the process by hundreds of MB a
 * second (measured: 2 GB in 7 s) while the silence check saw bytes arrive and never fired. Postern's own
 * replies are a few kilobytes at most (a turn's rate() calls: 300 integers).
 *
 * The client does not expose its socket: each one it makes is taken from the `net.client.socket` diagnostics
 * channel, which `net.connect` and `tls.connect` publish on as they create it, synchronously, inside the call
 * that the store makes or the client's `reconnecting` event announces (see claim()).
 */
import dc from 'node:diagnostics_channel';
import type net from 'node:net';

/** Bytes read since the last complete reply, past which the connection is given up on. */
export const MAX_REPLY_BYTES = 1024 * 1024;

/** Who takes the next client socket created in this turn of the event loop. */
let claimant: ((socket: net.Socket) => void) | null = null;
let subscribed = false;

function onClientSocket(message: unknown): void {
  const take = claimant;
  if (take === null) return;
  claimant = null;
  take((message as { socket: net.Socket }).socket);
}

export class ReplyBytes {
  readonly #limit: number;
  readonly #over: (bytes: number) => void;
  /** The current socket: bytes read on it, and that count when its last reply came. */
  #current: { read: number; atReply: number } | null = null;

  /**
   * `over`: the socket was given more than `limit` bytes toward one reply (called once per socket, which is then
   * destroyed with an error of that message: the client fails the commands on it and connects again with its
   * own growing delay, where a new client at once made a connection every few ms to a peer that streams at
   * the first command of each).
   */
  constructor(over: (bytes: number) => void, limit = MAX_REPLY_BYTES) {
    this.#over = over;
    this.#limit = limit;
  }

  /**
   * The next client socket created before this turn's code is done is the client's: call it right before
   * `connect()` and in its `reconnecting` event, after which the client creates its socket at once.
   */
  claim(): void {
    if (!subscribed) {
      dc.subscribe('net.client.socket', onClientSocket);
      subscribed = true;
    }
    const take = (socket: net.Socket): void => this.#watch(socket);
    claimant = take;
    // A claim not met in this turn (the client gave up instead) must not take someone else's socket later.
    queueMicrotask(() => { if (claimant === take) claimant = null; });
  }

  /** A reply came whole: what follows is the next one's. */
  replied(): void {
    const c = this.#current;
    if (c) c.atReply = c.read;
  }

  #watch(socket: net.Socket): void {
    const c = this.#current = { read: 0, atReply: 0 };
    // Added before the client's own 'data' listener (it adds its own once connected), so a chunk is counted
    // before it is decoded, and the replies it completes (settled after it) move atReply past it.
    const count = (chunk: Buffer): void => {
      c.read += chunk.length;
      if (c.read - c.atReply <= this.#limit) return;
      socket.off('data', count);
      const bytes = c.read - c.atReply;
      if (this.#current === c) this.#over(bytes);
      socket.destroy(new Error(`${bytes} bytes toward one reply (at most ${this.#limit})`));
    };
    socket.on('data', count);
  }
}
