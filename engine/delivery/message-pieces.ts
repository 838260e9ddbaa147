/**
 * A message handed to the SMTP client a piece at a time. Handed over whole (one Buffer), nodemailer's data stream
 * dot-stuffs it into one new buffer (any line starting with a dot, any bare CR or LF makes it copy everything it is
 * given) and the socket keeps that, and a TLS socket its encrypted copy, until the next hop has read it all: a
 * message to many next hops that read slowly was held once more per transaction, none of it counted in
 * delivery.maxBytesInMemory. Piped in pieces, each transaction holds a few pieces beyond the message itself; the
 * pieces are views of the message, and the bytes sent are the same. A DKIM-signed message goes out as its signature
 * fields followed by the message they sign, not as one signed copy of it all.
 */
import { Readable } from 'node:stream';

const PIECE_BYTES = 64 * 1024;

/** `message` in pieces, after `prefix` (a DKIM signature's fields, sent in front of the message they sign). */
export function messagePieces(message: Buffer, prefix?: Buffer): Readable {
  let at = 0;
  let first = prefix?.length ? prefix : null;
  return new Readable({
    highWaterMark: PIECE_BYTES,
    read() {
      if (first) {
        const piece = first;
        first = null;
        if (!this.push(piece)) return;
      }
      // Until the consumer (the data stream, piped to the socket) pushes back: no copy, subarrays of the message.
      while (at < message.length) {
        const piece = message.subarray(at, Math.min(message.length, at + PIECE_BYTES));
        at += piece.length;
        if (!this.push(piece)) return;
      }
      this.push(null);
    },
  });
}
