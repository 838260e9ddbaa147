/**
 * The on-disk format of one spooled message, `<id>.msg`: the message bytes exactly as they will be
 * relayed (our Received header first), then the envelope as JSON, then a fixed-size footer giving the
 * JSON's length. One file means one fdatasync per message; the footer lets a reader find the envelope
 * without parsing the message.
 */
import type { FileHandle } from 'node:fs/promises';
import type { SpoolEnvelope } from './envelope.ts';

const MAGIC = 'POSTERN-ENVELOPE-V1';
/** "\n" + MAGIC + " " + 10-digit length + "\n" */
export const FOOTER_BYTES = 1 + MAGIC.length + 1 + 10 + 1;

export function encodeTrailer(envelope: SpoolEnvelope): Buffer {
  const json = JSON.stringify(envelope);
  return Buffer.from(`${json}\n${MAGIC} ${String(Buffer.byteLength(json)).padStart(10, '0')}\n`);
}

export interface MessageLayout {
  envelope: SpoolEnvelope;
  /** Bytes of message data at the start of the file. */
  messageBytes: number;
}

/** Read the envelope from an open message file; throws if the file is not a complete spool file. */
export async function readLayout(handle: FileHandle, file: string): Promise<MessageLayout> {
  const { size } = await handle.stat();
  if (size < FOOTER_BYTES) throw new Error(`${file}: truncated spool file`);
  const footer = Buffer.alloc(FOOTER_BYTES);
  await handle.read(footer, 0, FOOTER_BYTES, size - FOOTER_BYTES);
  const m = new RegExp(`^\\n${MAGIC} (\\d{10})\\n$`).exec(footer.toString('latin1'));
  if (!m) throw new Error(`${file}: no envelope footer`);
  const jsonBytes = Number(m[1]);
  const messageBytes = size - FOOTER_BYTES - jsonBytes;
  if (messageBytes < 0) throw new Error(`${file}: bad envelope length`);
  const json = Buffer.alloc(jsonBytes);
  await handle.read(json, 0, jsonBytes, messageBytes);
  return { envelope: JSON.parse(json.toString('utf8')) as SpoolEnvelope, messageBytes };
}

/** The same from a whole file already in memory (one read instead of three). */
export function parseLayout(data: Buffer, file: string): MessageLayout {
  if (data.length < FOOTER_BYTES) throw new Error(`${file}: truncated spool file`);
  const m = new RegExp(`^\\n${MAGIC} (\\d{10})\\n$`).exec(data.subarray(data.length - FOOTER_BYTES).toString('latin1'));
  if (!m) throw new Error(`${file}: no envelope footer`);
  const jsonBytes = Number(m[1]);
  const messageBytes = data.length - FOOTER_BYTES - jsonBytes;
  if (messageBytes < 0) throw new Error(`${file}: bad envelope length`);
  const envelope = JSON.parse(data.subarray(messageBytes, messageBytes + jsonBytes).toString('utf8')) as SpoolEnvelope;
  return { envelope, messageBytes };
}
