/**
 * A TLS handshake's time limit (limits.tlsHandshakeTimeoutMs), on implicit TLS and after STARTTLS. Judged after the
 * sockets are read (deadline-after-reads.ts): a server that gets the CPU back late runs its timers before it polls
 * its sockets, and a handshake whose ClientHello had come in time, waiting there, was cut unread. A handshake is
 * several round trips, and the one read late has the rest still to go: so a handshake that progressed (bytes read
 * from the client) since its time was set gets that time once more, and only once, so that a client sending its
 * handshake a byte at a time still holds its connection no longer than twice the limit.
 */
import type { Socket } from 'node:net';
import { deadlineAfterReads } from './deadline-after-reads.ts';

/** The connection's socket keeps the process running; its deadline alone does not (as a socket's own timeout). */
const UNREF = { unref: true };

/** Calls `expire` once the handshake on `raw` (the TCP socket) has had its `ms`; the function returned cancels it. */
export function handshakeDeadline(raw: Socket, ms: number, expire: () => void): () => void {
  // The TCP socket's count includes what its TLS socket reads: the handshake's bytes.
  const readAtStart = raw.bytesRead;
  let again = true;
  const look = (): void => {
    if (again && raw.bytesRead !== readAtStart) {
      again = false;
      cancel = deadlineAfterReads(ms, look, UNREF);
      return;
    }
    expire();
  };
  let cancel = deadlineAfterReads(ms, look, UNREF);
  return () => cancel();
}
