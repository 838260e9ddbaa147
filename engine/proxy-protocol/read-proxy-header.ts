/**
 * Read the PROXY header off an accepted socket, byte-exact for what follows: whatever arrived with it (an
 * implicit-TLS ClientHello) is put back on the socket for smtp-server, whose TLS socket replays it.
 */
import type { Socket } from 'node:net';
import { parseProxyHeader, type ProxyHeader } from './proxy-header.ts';
import { deadlineAfterReads } from '../timing/deadline-after-reads.ts';

export class ProxyHeaderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProxyHeaderError';
  }
}

/**
 * Resolves with the header once it is complete; rejects when it is malformed, when the socket closes or
 * ends first, or when it is not complete within `timeoutMs`. The socket is left as it was (no listeners of
 * ours) except for the bytes of the header, which are consumed.
 */
export function readProxyHeader(socket: Socket, timeoutMs: number): Promise<ProxyHeader> {
  return new Promise((resolve, reject) => {
    // The pieces so far, joined only when a parse needs them: once a v2 header's fixed part names its
    // length, not again until that many bytes are here. Joining each piece onto all before it copied
    // n²/2 bytes for a header sent a byte at a time. Until then at most 107 bytes (a v1 line) are rejoined.
    const pieces: Buffer[] = [];
    let received = 0;
    let needed = 1;
    let settled = false;
    const finish = (err: Error | null, header?: ProxyHeader, rest?: Buffer): void => {
      if (settled) return;
      settled = true;
      cancelDeadline();
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      socket.off('close', onClose);
      socket.off('error', onError);
      if (err) return reject(err);
      if (rest?.length) socket.unshift(rest);
      resolve(header!);
    };
    const onReadable = (): void => {
      let chunk: Buffer | null;
      while (!settled && (chunk = socket.read() as Buffer | null) !== null) {
        pieces.push(chunk);
        received += chunk.length;
        if (received < needed) continue;
        if (pieces.length > 1) pieces.splice(0, pieces.length, Buffer.concat(pieces, received));
        const buffered = pieces[0]!;
        const parsed = parseProxyHeader(buffered);
        if (parsed.status === 'incomplete') {
          needed = parsed.length ?? received + 1;
          continue;
        }
        if (parsed.status === 'invalid') return finish(new ProxyHeaderError(`invalid PROXY header: ${parsed.reason}`));
        return finish(null, parsed.header, buffered.subarray(parsed.header.length));
      }
    };
    const onEnd = (): void => finish(new ProxyHeaderError('connection ended before its PROXY header'));
    const onClose = (): void => finish(new ProxyHeaderError('connection closed before its PROXY header'));
    const onError = (err: Error): void => finish(new ProxyHeaderError(`connection failed before its PROXY header: ${err.message}`));
    // Judged after the sockets are read: a server that gets the CPU back late runs its timers first, and a header
    // that had come in time, waiting in the socket, was refused unread (the balancer's client got no greeting).
    const cancelDeadline = deadlineAfterReads(timeoutMs, () => finish(new ProxyHeaderError(`no PROXY header within ${timeoutMs} ms`)));
    socket.on('readable', onReadable);
    socket.on('end', onEnd);
    socket.on('close', onClose);
    socket.on('error', onError);
    // A socket handed over paused (the supervisor's pauseOnConnect) starts reading with the 'readable' listener.
    onReadable();
  });
}
