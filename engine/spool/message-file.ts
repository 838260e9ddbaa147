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

/** Any release's footer, to tell a message file of a newer release from a damaged one. */
const ANY_FOOTER = /^\nPOSTERN-ENVELOPE-V(\d{1,6}) \d{10}\n$/;
/** The envelope versions this release reads (envelope.ts). */
const ENVELOPE_VERSION = 1;

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
  if (!m) throw noFooter(footer, file);
  const jsonBytes = Number(m[1]);
  const messageBytes = size - FOOTER_BYTES - jsonBytes;
  if (messageBytes < 0) throw new Error(`${file}: bad envelope length`);
  const json = Buffer.alloc(jsonBytes);
  await handle.read(json, 0, jsonBytes, messageBytes);
  return { envelope: checkVersion(JSON.parse(json.toString('utf8')), file), messageBytes };
}

/** The same from a whole file already in memory (one read instead of three). */
export function parseLayout(data: Buffer, file: string): MessageLayout {
  if (data.length < FOOTER_BYTES) throw new Error(`${file}: truncated spool file`);
  const footer = data.subarray(data.length - FOOTER_BYTES);
  const m = new RegExp(`^\\n${MAGIC} (\\d{10})\\n$`).exec(footer.toString('latin1'));
  if (!m) throw noFooter(footer, file);
  const jsonBytes = Number(m[1]);
  const messageBytes = data.length - FOOTER_BYTES - jsonBytes;
  if (messageBytes < 0) throw new Error(`${file}: bad envelope length`);
  const envelope = checkVersion(JSON.parse(data.subarray(messageBytes, messageBytes + jsonBytes).toString('utf8')), file);
  return { envelope, messageBytes };
}

/** The error for a file without our footer: one of a newer release is said to be that, not damage. */
function noFooter(footer: Buffer, file: string): Error {
  const version = Number(ANY_FOOTER.exec(footer.toString('latin1'))?.[1] ?? 0);
  return version > ENVELOPE_VERSION ? newerEnvelope(file, `footer version ${version}`) : new Error(`${file}: no envelope footer`);
}

/**
 * The envelope, if this release knows its version. One of a newer release (a downgrade) may mean something else by
 * the same fields (recipients, hold, state): it is reported and not delivered, never delivered as if it were ours.
 */
function checkVersion(envelope: unknown, file: string): SpoolEnvelope {
  const version = (envelope as { version?: unknown } | null)?.version;
  if (version === ENVELOPE_VERSION) return envelope as SpoolEnvelope;
  if (typeof version === 'number' && version > ENVELOPE_VERSION) throw newerEnvelope(file, `envelope version ${version}`);
  throw new Error(`${file}: not a spool envelope (version ${JSON.stringify(version)})`);
}

function newerEnvelope(file: string, what: string): Error {
  return new Error(`${file}: written by a newer release of Postern (${what}; this one reads version ${ENVELOPE_VERSION}): not delivered; deliver it with that release`);
}
